"""Frontend messages: builders for what the proxy sends upstream, decoders for the few it inspects.

Decoders take a message body (after the 5-byte header) and return only what the proxy needs:
the SQL text of Query and Parse, and the statement names of Parse, Bind, Describe and Close.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from rlsproxy.wire import codes
from rlsproxy.wire.backend import message

_I16: Final = struct.Struct("!h")
_I32: Final = struct.Struct("!i")

SYNC: Final = message(codes.SYNC, b"")
FLUSH: Final = message(codes.FLUSH, b"")
TERMINATE: Final = message(codes.TERMINATE, b"")


class MalformedMessage(Exception):
    """A message body that does not have the layout its type requires."""


def query(sql: str) -> bytes:
    return message(codes.QUERY, sql.encode() + b"\0")


def parse(name: str, sql: str, param_types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + _I16.pack(len(param_types))
    body += b"".join(_I32.pack(oid) for oid in param_types)
    return message(codes.PARSE, body)


def bind(statement: str, params: tuple[str | None, ...], portal: str = "") -> bytes:
    """Bind with all parameters in text format and all results in text format."""
    parts = [portal.encode(), b"\0", statement.encode(), b"\0", _I16.pack(0), _I16.pack(len(params))]
    for value in params:
        if value is None:
            parts.append(_I32.pack(-1))
        else:
            raw = value.encode()
            parts.append(_I32.pack(len(raw)))
            parts.append(raw)
    parts.append(_I16.pack(0))
    return message(codes.BIND, b"".join(parts))


class BindParts(NamedTuple):
    portal: bytes
    statement: bytes
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def bind_parts(body: bytes) -> BindParts:
    """Every field of a Bind message body. MalformedMessage if the layout is wrong."""
    portal, pos = _cstring(body, 0)
    statement, pos = _cstring(body, pos)
    try:
        (count,) = _I16.unpack_from(body, pos)
        formats = struct.unpack_from(f"!{count}h", body, pos + 2)
        pos += 2 + 2 * count
        (count,) = _I16.unpack_from(body, pos)
        pos += 2
        params: list[bytes | None] = []
        for _ in range(count):
            (size,) = _I32.unpack_from(body, pos)
            pos += 4
            if size < 0:
                params.append(None)
                continue
            if pos + size > len(body):
                raise MalformedMessage("Bind parameter runs past the message")
            params.append(bytes(body[pos : pos + size]))
            pos += size
        (count,) = _I16.unpack_from(body, pos)
        results = struct.unpack_from(f"!{count}h", body, pos + 2)
    except struct.error:
        raise MalformedMessage("Bind message is truncated") from None
    return BindParts(portal, statement, formats, tuple(params), results)


def build_bind(parts: BindParts) -> bytes:
    """A Bind message from its fields (parameters given as raw bytes in their stated formats)."""
    out = [parts.portal, b"\0", parts.statement, b"\0", _I16.pack(len(parts.param_formats))]
    out += [_I16.pack(f) for f in parts.param_formats]
    out.append(_I16.pack(len(parts.params)))
    for value in parts.params:
        if value is None:
            out.append(_I32.pack(-1))
        else:
            out += [_I32.pack(len(value)), value]
    out.append(_I16.pack(len(parts.result_formats)))
    out += [_I16.pack(f) for f in parts.result_formats]
    return message(codes.BIND, b"".join(out))


def parse_param_types(body: bytes) -> tuple[int, ...]:
    """The parameter type OIDs declared in a Parse message body."""
    _, pos = _cstring(body, 0)
    _, pos = _cstring(body, pos)
    try:
        (count,) = _I16.unpack_from(body, pos)
        return tuple(struct.unpack_from(f"!{count}I", body, pos + 2))
    except struct.error:
        raise MalformedMessage("Parse message is truncated") from None


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(codes.EXECUTE, portal.encode() + b"\0" + _I32.pack(max_rows))


def password(secret: bytes) -> bytes:
    """A PasswordMessage/SASL response whose body the caller already built."""
    return message(codes.PASSWORD_MESSAGE, secret)


def _cstring(body: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    raw = bytes(body) if isinstance(body, memoryview) else body
    end = raw.find(b"\0", pos)
    if end < 0:
        raise MalformedMessage("missing string terminator")
    return raw[pos:end], end + 1


def query_text(body: bytes) -> bytes:
    """The SQL of a Query message body (without its terminator)."""
    if not body or body[-1] != 0:
        raise MalformedMessage("Query message is missing its string terminator")
    return body[:-1]


def parse_fields(body: bytes) -> tuple[bytes, bytes]:
    """(statement name, SQL) of a Parse message body."""
    name, pos = _cstring(body, 0)
    sql, _ = _cstring(body, pos)
    return name, sql


def bind_statement(body: bytes) -> bytes:
    """Statement name of a Bind message body (the portal name comes first)."""
    _, pos = _cstring(body, 0)
    name, _ = _cstring(body, pos)
    return name


def target(body: bytes) -> tuple[int, bytes]:
    """(kind 'S' or 'P', name) of a Describe or Close message body."""
    if not body:
        raise MalformedMessage("Describe/Close message is empty")
    name, _ = _cstring(body, 1)
    return body[0], name


def password_text(body: bytes) -> str:
    raw, _ = _cstring(body, 0)
    return raw.decode(errors="replace")
