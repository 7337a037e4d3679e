"""Frontend messages: builders for what the proxy sends upstream, decoders for the few it inspects.

Decoders take a message body (after the 5-byte header) and return only what the proxy needs:
the SQL text of Query and Parse, and the statement names of Parse, Bind, Describe and Close. A body
without the layout its type requires raises MalformedMessage, whose text names the message type:
the edge answers it as Postgres answers a protocol violation (08P01) and closes the connection.

`header_error` is Postgres' check of a message header before it reads the body (postgres.c,
SocketBackend): an unknown type, or a length its type never has, is refused at once.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from rlsproxy.wire import codes
from rlsproxy.wire.backend import message

_I16: Final = struct.Struct("!h")
_U16: Final = struct.Struct("!H")  # counts: Postgres reads them unsigned (pq_getmsgint(msg, 2))
_I32: Final = struct.Struct("!i")
_U32: Final = struct.Struct("!I")  # type OIDs: unsigned, 2^31 and above are OIDs too

SYNC: Final = message(codes.SYNC, b"")
FLUSH: Final = message(codes.FLUSH, b"")
TERMINATE: Final = message(codes.TERMINATE, b"")


class MalformedMessage(ValueError):
    """A message body that does not have the layout its type requires (the text names the type)."""


# Postgres' limits on a frontend message's length word (which counts itself), by type
# (src/include/libpq/libpq.h, postgres.c SocketBackend): PQ_SMALL_MESSAGE_LIMIT for messages that
# carry at most a name, PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1) for those that carry SQL or data.
SMALL_MESSAGE_LIMIT: Final = 10_000
LARGE_MESSAGE_LIMIT: Final = 0x3FFFFFFE
LARGE_TYPES: Final = frozenset((codes.QUERY, codes.FUNCTION_CALL, codes.BIND, codes.PARSE, codes.COPY_DATA))
NAMES: Final = {
    codes.BIND: "Bind",
    codes.CLOSE: "Close",
    codes.DESCRIBE: "Describe",
    codes.EXECUTE: "Execute",
    codes.FUNCTION_CALL: "FunctionCall",
    codes.FLUSH: "Flush",
    codes.PARSE: "Parse",
    codes.QUERY: "Query",
    codes.SYNC: "Sync",
    codes.TERMINATE: "Terminate",
    codes.COPY_DATA: "CopyData",
    codes.COPY_DONE: "CopyDone",
    codes.COPY_FAIL: "CopyFail",
}
KNOWN_TYPES: Final = frozenset(NAMES)  # what a session may send; anything else is refused at its header


def header_error(t: int, length: int) -> str:
    """Why Postgres refuses a message of type `t` and length word `length` at its header ("": it
    does not). Postgres answers an unknown type with FATAL 08P01; a length its type never has ends
    the connection."""
    name = NAMES.get(t)
    if name is None:
        return f"invalid frontend message type {t}"  # Postgres' words
    limit = LARGE_MESSAGE_LIMIT if t in LARGE_TYPES else SMALL_MESSAGE_LIMIT
    if length < 4 or length > limit:
        return f"invalid message length {length} for a {name} message (Postgres accepts 4 to {limit})"
    return ""


def query(sql: str) -> bytes:
    return message(codes.QUERY, sql.encode() + b"\0")


def parse(name: str, sql: str, param_types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + _U16.pack(len(param_types))
    body += b"".join(_U32.pack(oid & 0xFFFFFFFF) for oid in param_types)
    return message(codes.PARSE, body)


def bind(statement: str, params: tuple[str | None, ...], portal: str = "") -> bytes:
    """Bind with all parameters in text format and all results in text format."""
    parts = [portal.encode(), b"\0", statement.encode(), b"\0", _I16.pack(0), _U16.pack(len(params))]
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
    portal, pos = _cstring(body, 0, "Bind")
    statement, pos = _cstring(body, pos, "Bind")
    try:
        (count,) = _U16.unpack_from(body, pos)
        formats = struct.unpack_from(f"!{count}h", body, pos + 2)
        pos += 2 + 2 * count
        (count,) = _U16.unpack_from(body, pos)
        pos += 2
        params: list[bytes | None] = []
        for _ in range(count):
            (size,) = _I32.unpack_from(body, pos)
            pos += 4
            if size == -1:
                params.append(None)
                continue
            if size < 0 or pos + size > len(body):
                raise MalformedMessage("malformed Bind message: a parameter value runs past its end")
            params.append(bytes(body[pos : pos + size]))
            pos += size
        (count,) = _U16.unpack_from(body, pos)
        results = struct.unpack_from(f"!{count}h", body, pos + 2)
    except struct.error:
        raise MalformedMessage("malformed Bind message: truncated") from None
    return BindParts(portal, statement, formats, tuple(params), results)


def build_bind(parts: BindParts) -> bytes:
    """A Bind message from its fields (parameters given as raw bytes in their stated formats)."""
    out = [parts.portal, b"\0", parts.statement, b"\0", _U16.pack(len(parts.param_formats))]
    out += [_I16.pack(f) for f in parts.param_formats]
    out.append(_U16.pack(len(parts.params)))
    for value in parts.params:
        if value is None:
            out.append(_I32.pack(-1))
        else:
            out += [_I32.pack(len(value)), value]
    out.append(_U16.pack(len(parts.result_formats)))
    out += [_I16.pack(f) for f in parts.result_formats]
    return message(codes.BIND, b"".join(out))


def parse_param_types(body: bytes) -> tuple[int, ...]:
    """The parameter type OIDs declared in a Parse message body (unsigned, as Postgres reads them)."""
    _, pos = _cstring(body, 0, "Parse")
    _, pos = _cstring(body, pos, "Parse")
    try:
        (count,) = _U16.unpack_from(body, pos)
        return tuple(struct.unpack_from(f"!{count}I", body, pos + 2))
    except struct.error:
        raise MalformedMessage(
            "malformed Parse message: its parameter type list is shorter than its count"
        ) from None


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(codes.EXECUTE, portal.encode() + b"\0" + _I32.pack(max_rows))


def password(secret: bytes) -> bytes:
    """A PasswordMessage/SASL response whose body the caller already built."""
    return message(codes.PASSWORD_MESSAGE, secret)


def _cstring(body: bytes | memoryview, pos: int, what: str) -> tuple[bytes, int]:
    """The string at `pos` of a `what` message, and where the next field starts."""
    raw = bytes(body) if isinstance(body, memoryview) else body
    end = raw.find(b"\0", pos)
    if end < 0:
        raise MalformedMessage(f"malformed {what} message: a string has no terminating zero byte")
    return raw[pos:end], end + 1


def query_text(body: bytes) -> bytes:
    """The SQL of a Query message body (without its terminator)."""
    if not body or body[-1] != 0:
        raise MalformedMessage("malformed Query message: its text has no terminating zero byte")
    return body[:-1]


def parse_fields(body: bytes) -> tuple[bytes, bytes]:
    """(statement name, SQL) of a Parse message body."""
    name, pos = _cstring(body, 0, "Parse")
    sql, _ = _cstring(body, pos, "Parse")
    return name, sql


def bind_statement(body: bytes) -> bytes:
    """Statement name of a Bind message body (the portal name comes first)."""
    _, pos = _cstring(body, 0, "Bind")
    name, _ = _cstring(body, pos, "Bind")
    return name


def target(body: bytes) -> tuple[int, bytes]:
    """(kind 'S' or 'P', name) of a Describe or Close message body."""
    if not body:
        raise MalformedMessage("malformed Describe or Close message: it is empty")
    name, _ = _cstring(body, 1, "Describe or Close")
    return body[0], name


def password_text(body: bytes) -> str:
    raw, _ = _cstring(body, 0, "password")
    return raw.decode(errors="replace")
