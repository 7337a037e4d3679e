"""The relay refuses at its header a message Postgres refuses there, without waiting for its body."""

from __future__ import annotations

import struct

import pytest

from rlsproxy.errors import ProtocolViolation
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from tests.unit.session.test_relay import from_client, make_relay


def header(t: int, length: int) -> bytes:
    return bytes([t]) + struct.pack("!I", length)


@pytest.mark.parametrize("t", [0x00, 0x01, ord("p"), ord("z"), 0xFF])
def test_an_unknown_type_is_refused_before_its_body(t: int) -> None:
    relay, _ = make_relay()
    with pytest.raises(ProtocolViolation, match=f"^invalid frontend message type {t}$"):
        from_client(relay, header(t, 100))


@pytest.mark.parametrize("t", sorted(fe.KNOWN_TYPES - fe.LARGE_TYPES))
def test_a_small_type_longer_than_postgres_accepts_is_refused_at_its_header(t: int) -> None:
    relay, _ = make_relay()
    with pytest.raises(ProtocolViolation, match="invalid message length 10001"):
        from_client(relay, header(t, 10_001))


def test_postgres_limits_still_pass() -> None:
    relay, _ = make_relay()
    upstream, _ = from_client(relay, header(codes.SYNC, 10_000))  # waits for its body: Postgres would
    assert upstream == b""
    relay, _ = make_relay()
    big = fe.query("select '" + "x" * 20_000 + "'")
    assert from_client(relay, big[:5000])[0] == b""  # a Query may be long: kept until whole


def test_header_error_names_the_type_and_its_limit() -> None:
    assert fe.header_error(codes.SYNC, 4) == ""
    assert fe.header_error(codes.QUERY, 1 << 29) == ""
    assert fe.header_error(codes.SYNC, 10_001) == (
        "invalid message length 10001 for a Sync message (Postgres accepts 4 to 10000)"
    )
    assert "Bind" in fe.header_error(codes.BIND, 3)
    assert fe.header_error(0, 9984) == "invalid frontend message type 0"


@pytest.mark.parametrize(
    ("decode", "body", "named"),
    [
        (fe.query_text, b"select 1", "Query"),
        (fe.parse_fields, b"s1", "Parse"),
        (fe.parse_fields, b"s1\0select 1", "Parse"),
        (fe.bind_statement, b"p\0s1", "Bind"),
        (fe.target, b"", "Describe or Close"),
        (fe.target, b"Ss1", "Describe or Close"),
        (fe.parse_param_types, b"\0select $1\0\0\x03\0\0\0\x19", "Parse"),
        (fe.bind_parts, b"\0\0\0\0\0\x01\xff\xff\xff\xfe", "Bind"),
    ],
)
def test_a_malformed_body_raises_one_error_naming_its_type(decode: object, body: bytes, named: str) -> None:
    assert callable(decode)
    with pytest.raises(fe.MalformedMessage, match=f"^malformed {named} message: "):
        decode(body)
    assert issubclass(fe.MalformedMessage, ValueError)


def test_counts_and_type_oids_are_unsigned_as_postgres_reads_them() -> None:
    body = fe.parse("", "select $1", (2**31 + 5, 0xFFFFFFFF))[5:]
    assert fe.parse_param_types(body) == (2**31 + 5, 0xFFFFFFFF)
    many = fe.bind("s", tuple("v" for _ in range(40_000)))
    parts = fe.bind_parts(many[5:])
    assert len(parts.params) == 40_000 and fe.build_bind(parts) == many
