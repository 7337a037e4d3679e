"""Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rlsproxy.wire import codes


class StartupError(Exception):
    """A startup packet that is not well formed (the caller answers 08P01 and closes)."""


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    params: dict[str, str]
    protocol_options: tuple[str, ...]  # `_pq_.*` names, which 3.0 does not know


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one whole startup-phase packet (length prefix included)."""
    if len(packet) < 8:
        raise StartupError("startup packet too short")
    code = int.from_bytes(packet[4:8], "big")
    if code == codes.SSL_REQUEST_CODE:
        return SSLRequest()
    if code == codes.GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == codes.CANCEL_REQUEST_CODE:
        if len(packet) < 16:
            raise StartupError("cancel request too short")
        return CancelRequest(int.from_bytes(packet[8:12], "big"), bytes(packet[12:]))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise StartupError(f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")
    params, options = _parse_params(packet[8:])
    return StartupMessage(major, minor, params, options)


def _parse_params(body: bytes) -> tuple[dict[str, str], tuple[str, ...]]:
    parts = body.split(b"\0")
    # A well-formed list is name\0value\0...\0 and a final \0: split leaves two empty strings at the end.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2 != 0:
        raise StartupError("invalid startup packet layout: expected terminator as last byte")
    params: dict[str, str] = {}
    options: list[str] = []
    try:
        for i in range(0, len(parts) - 2, 2):
            name, value = parts[i].decode(), parts[i + 1].decode()
            if not name:
                raise StartupError("invalid startup packet layout: empty parameter name")
            if name.startswith("_pq_."):
                options.append(name)
            else:
                params[name] = value
    except UnicodeDecodeError as exc:
        raise StartupError("startup packet is not valid UTF-8") from exc
    return params, tuple(options)


def build_startup_message(params: dict[str, str]) -> bytes:
    """StartupMessage for protocol 3.0, as the proxy sends it upstream."""
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", len(body) + 8, codes.PROTOCOL_3_0) + body


def build_ssl_request() -> bytes:
    return struct.pack("!ii", 8, codes.SSL_REQUEST_CODE)


def build_cancel_request(pid: int, secret: bytes) -> bytes:
    return struct.pack("!iii", 12 + len(secret), codes.CANCEL_REQUEST_CODE, pid) + secret


def build_negotiate_protocol_version(newest_minor: int, unrecognized: tuple[str, ...]) -> bytes:
    body = struct.pack("!ii", newest_minor, len(unrecognized)) + b"".join(
        o.encode() + b"\0" for o in unrecognized
    )
    return b"v" + struct.pack("!i", len(body) + 4) + body
