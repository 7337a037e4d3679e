"""Backend messages: builders for what the proxy says itself, decoders for what it must read."""

from __future__ import annotations

import struct
from typing import Final

from rlsproxy.wire import codes

_I32: Final = struct.Struct("!i")


def message(type_byte: int, body: bytes) -> bytes:
    return bytes((type_byte,)) + _I32.pack(len(body) + 4) + body


def authentication(code: int, payload: bytes = b"") -> bytes:
    return message(codes.AUTHENTICATION, _I32.pack(code) + payload)


AUTHENTICATION_OK: Final = authentication(codes.AUTH_OK)
AUTHENTICATION_CLEARTEXT_PASSWORD: Final = authentication(codes.AUTH_CLEARTEXT_PASSWORD)


def parameter_status(name: str, value: str) -> bytes:
    return message(codes.PARAMETER_STATUS, name.encode() + b"\0" + value.encode() + b"\0")


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(codes.BACKEND_KEY_DATA, _I32.pack(pid) + secret)


def ready_for_query(status: int) -> bytes:
    return message(codes.READY_FOR_QUERY, bytes((status,)))


def error_response(
    code: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
    notice: bool = False,
) -> bytes:
    """ErrorResponse (or NoticeResponse) with the fields libpq and drivers read."""
    fields = [(b"S", severity), (b"V", severity), (b"C", code), (b"M", text)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    if position is not None:
        fields.append((b"P", str(position)))
    body = b"".join(k + v.encode() + b"\0" for k, v in fields) + b"\0"
    return message(codes.NOTICE_RESPONSE if notice else codes.ERROR_RESPONSE, body)


def fields_message(type_byte: int, fields: dict[str, str]) -> bytes:
    """Rebuild an ErrorResponse/NoticeResponse from decoded fields (order kept)."""
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    return message(type_byte, body)


def parse_fields(body: bytes | memoryview) -> dict[str, str]:
    """Decode the fields of an ErrorResponse or NoticeResponse body."""
    out: dict[str, str] = {}
    raw = bytes(body)
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        end = raw.index(b"\0", pos + 1)
        out[chr(raw[pos])] = raw[pos + 1 : end].decode(errors="replace")
        pos = end + 1
    return out


def parse_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    name, value, _ = bytes(body).split(b"\0", 2)
    return name.decode(), value.decode(errors="replace")
