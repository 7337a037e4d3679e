"""Malformed client input is the client's fault, not a proxy bug: it gets what Postgres answers.

A message Postgres refuses at its header (an unknown type, a length its type never has, a second
startup packet) or whose body the proxy must read and cannot (no terminating zero byte, an empty
Describe, a truncated parameter type list) gets FATAL 08P01 and the connection closes, with one
WARNING line and no traceback; the server connection behind it is closed, never pooled again. Bytes
Postgres reads as legal (names that are not UTF-8, type OIDs of 2^31 and more) go on and get
Postgres' own answer. Each case is sent to Postgres directly too, and the SQLSTATEs compared.

Postgres itself answers a body it cannot read with a non-fatal ERROR 08P01 (the message's length
told it where the next one starts); the proxy ends the session instead, as the relay cannot vouch for
what it forwarded of it. A length word Postgres refuses (or a startup packet under 8 bytes) makes
Postgres close without an answer; the proxy says FATAL 08P01 first.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlsproxy.config import LimitsConfig
from rlsproxy.devcluster import ALICE
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy, base_config
from tests.support.rawpg import Message, RawConnection, error_fields

SWITCH = b"SELECT set_config('rlsproxy.jwt', $1, true)"
BIG_OID = 2**31 + 5


def msg(t: int, body: bytes) -> bytes:
    """A message with the right length word around any body."""
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


def header(t: int, length: int) -> bytes:
    """Only a header: Postgres refuses some before reading a body, and so must the proxy."""
    return bytes([t]) + struct.pack("!I", length)


def types_list(count: int, *oids: int) -> bytes:
    return struct.pack("!H", count) + b"".join(struct.pack("!I", oid) for oid in oids)


# Bodies the proxy must read and cannot: FATAL 08P01 from the proxy, ERROR 08P01 from Postgres.
UNREADABLE = {
    "query without terminator": msg(codes.QUERY, b"select 1"),
    "parse name without terminator": msg(codes.PARSE, b"s1"),
    "parse sql without terminator": msg(codes.PARSE, b"s1\0select 1"),
    "bind without terminator": msg(codes.BIND, b"p\0s1"),
    "describe statement without terminator": msg(codes.DESCRIBE, b"Ss1"),
    "close statement without terminator": msg(codes.CLOSE, b"Ss1"),
    "empty describe": msg(codes.DESCRIBE, b""),
    "empty close": msg(codes.CLOSE, b""),
    "in-band parse with truncated types": msg(codes.PARSE, b"\0" + SWITCH + b"\0" + types_list(3, 25)),
    "named in-band parse with truncated types": msg(codes.PARSE, b"sw\0" + SWITCH + b"\0" + types_list(2)),
}

# Refused at the header, before any body: Postgres answers FATAL 08P01 (unknown type) or closes
# without an answer (a length its type never has). The proxy must not wait for the body either.
AT_HEADER = {
    "unknown type": header(0x01, 100),
    "unknown type, long": header(ord("z"), 1 << 20),
    "password message after login": header(codes.PASSWORD_MESSAGE, 60),
    "second startup packet": struct.pack("!ii", 40, codes.PROTOCOL_3_0) + b"user\0app\0database\0app\0\0\0\0",
    "long sync": header(codes.SYNC, 10_001),
    "long flush": header(codes.FLUSH, 1 << 20),
    "long execute": header(codes.EXECUTE, 20_000),
    "long describe": header(codes.DESCRIBE, 10_001),
    "long close": header(codes.CLOSE, 64 << 20),
    "long terminate": header(codes.TERMINATE, 50_000),
    "long copy done": header(codes.COPY_DONE, 50_000),
    "length below 4": header(codes.SYNC, 3),
}
POSTGRES_CLOSES_SILENTLY = {"long sync", "long flush", "long execute", "long describe", "long close"}
POSTGRES_CLOSES_SILENTLY |= {"long terminate", "long copy done", "length below 4"}


@pytest.fixture
def patient_proxy(make_proxy: Any, pg: Any) -> RunningProxy:
    """A startup timeout far beyond the reads' timeouts: an answer that comes is not the timeout's."""
    proxy: RunningProxy = make_proxy(base_config(pg, limits=LimitsConfig(startup_timeout_s=60.0)))
    return proxy


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="rlsproxy")
    yield caplog
    assert_no_bug_logged(caplog)


def assert_no_bug_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "bug" not in record.getMessage(), record.getMessage()
    assert "Traceback" not in caplog.text


def login(port: int) -> RawConnection:
    conn = RawConnection(
        port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    assert conn.greeting[-1][0] == "Z", conn.greeting
    conn.sock.settimeout(10)
    return conn


def direct(pg: Any) -> RawConnection:
    conn = RawConnection(pg.port, {"user": "postgres", "database": "app"})
    assert conn.greeting[-1][0] == "Z", conn.greeting
    conn.sock.settimeout(10)
    return conn


def works(conn: RawConnection) -> None:
    conn.send(fe.query("select 41 + 1"))
    replies = conn.until_ready()
    assert ("D", b"\x00\x01\x00\x00\x00\x0242") in replies, replies


def key_pid(conn: RawConnection) -> int:
    return next(int.from_bytes(body[:4], "big") for t, body in conn.greeting if t == "K")


def answer(conn: RawConnection) -> tuple[list[Message], bool]:
    """Replies up to a FATAL error or a ReadyForQuery, and whether the peer then closed."""
    replies: list[Message] = []
    while True:
        try:
            reply = conn.read()
        except ConnectionError:
            return replies, True
        replies.append(reply)
        if reply[0] == "E" and error_fields(reply)["S"] == "FATAL":
            return replies, conn.closed_by_peer()
        if reply[0] == "Z":
            return replies, False


def first_error(replies: list[Message]) -> dict[str, str]:
    found = [error_fields(r) for r in replies if r[0] == "E"]
    assert found, replies
    return found[0]


def fatal_protocol_violation(conn: RawConnection) -> dict[str, str]:
    replies, closed = answer(conn)
    error = first_error(replies)
    assert (error["S"], error["C"]) == ("FATAL", "08P01"), error
    assert closed, replies
    return error


def server_of(proxy: RunningProxy, pid: int) -> Any:
    return proxy.run(lambda: proxy.proxy.clients[pid].server)


def assert_server_dropped(proxy: RunningProxy, server: Any) -> None:
    """Closed, never back in the pool: the proxy cannot be sure what reached it."""

    def check() -> tuple[bool, bool]:
        pool = proxy.proxy.pool
        return server.closed, server in pool._idle or server in pool._resetting

    assert proxy.run(check) == (True, False)


def protocol_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "protocol" in r.getMessage()
    ]


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unreadable_body_is_a_fatal_protocol_violation(
    proxy: RunningProxy, pg: Any, log_lines: pytest.LogCaptureFixture, case: str
) -> None:
    bystander = login(proxy.port)
    works(bystander)
    conn = login(proxy.port)
    works(conn)  # a server attached: it must be closed, not pooled
    server = server_of(proxy, key_pid(conn))
    conn.send(UNREADABLE[case] + fe.SYNC)
    error = fatal_protocol_violation(conn)
    assert "malformed" in error["M"] and "message" in error["M"], error
    assert_server_dropped(proxy, server)
    warnings = protocol_warnings(log_lines)
    assert len(warnings) == 1 and error["M"] in warnings[0], log_lines.text
    works(bystander)
    works(login(proxy.port))
    # Postgres: the same SQLSTATE (as a non-fatal ERROR: the length told it where the next message starts).
    pg_conn = direct(pg)
    pg_conn.send(UNREADABLE[case] + fe.SYNC)
    assert first_error(pg_conn.until_ready())["C"] == "08P01"


@pytest.mark.parametrize("case", sorted(AT_HEADER))
def test_a_header_postgres_refuses_is_refused_before_its_body(
    proxy: RunningProxy, pg: Any, log_lines: pytest.LogCaptureFixture, case: str
) -> None:
    bystander = login(proxy.port)
    conn = login(proxy.port)
    works(conn)
    server = server_of(proxy, key_pid(conn))
    conn.send(AT_HEADER[case])  # no body follows: an answer that comes did not wait for one
    error = fatal_protocol_violation(conn)
    if "type" in case or "startup" in case or "password" in case:
        t = AT_HEADER[case][0]
        assert error["M"] == f"invalid frontend message type {t}", error  # Postgres' words
    else:
        assert "invalid message length" in error["M"], error
    assert_server_dropped(proxy, server)
    assert len(protocol_warnings(log_lines)) == 1, log_lines.text
    works(bystander)
    # Postgres refuses it as soon as the header came, too.
    pg_conn = direct(pg)
    pg_conn.send(AT_HEADER[case])
    replies, closed = answer(pg_conn)
    assert closed, replies
    if case in POSTGRES_CLOSES_SILENTLY:
        assert replies == [], replies
    else:
        assert (first_error(replies)["S"], first_error(replies)["C"]) == ("FATAL", "08P01")


def test_a_header_split_across_reads_is_refused_when_whole(proxy: RunningProxy) -> None:
    conn = login(proxy.port)
    works(conn)
    conn.send(header(codes.SYNC, 20_000)[:3])
    conn.send(header(codes.SYNC, 20_000)[3:])
    fatal_protocol_violation(conn)


@pytest.mark.parametrize("length", [0, 4, 7])
def test_a_startup_packet_under_8_bytes_is_refused_at_once(
    patient_proxy: RunningProxy, pg: Any, log_lines: pytest.LogCaptureFixture, length: int
) -> None:
    bystander = login(patient_proxy.port)
    with socket.create_connection(("127.0.0.1", patient_proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!i", length) + b"\0" * (max(length, 4) - 4))
        conn = RawConnection.__new__(RawConnection)
        conn.sock, conn.buf = sock, b""
        error = fatal_protocol_violation(conn)
    assert "invalid startup packet length" in error["M"], error
    works(bystander)
    # Postgres ("invalid length of startup packet", logged only) closes without an answer.
    with socket.create_connection(("127.0.0.1", pg.port), timeout=10) as sock:
        sock.sendall(struct.pack("!i", length) + b"\0" * (max(length, 4) - 4))
        assert sock.recv(1) == b""


def same_answer(proxy_conn: RawConnection, pg_conn: RawConnection, data: bytes) -> list[Message]:
    """Send `data` to both; the session goes on and both give the same SQLSTATEs."""
    proxy_conn.send(data)
    pg_conn.send(data)
    through = proxy_conn.until_ready()
    plain = pg_conn.until_ready()
    codes_through = [error_fields(r)["C"] for r in through if r[0] == "E"]
    assert codes_through == [error_fields(r)["C"] for r in plain if r[0] == "E"], (through, plain)
    assert all(error_fields(r)["S"] == "ERROR" for r in through if r[0] == "E"), through
    works(proxy_conn)
    return through


def test_names_that_are_not_utf8_get_postgres_answer(
    proxy: RunningProxy, pg: Any, log_lines: pytest.LogCaptureFixture
) -> None:
    conn, pg_conn = login(proxy.port), direct(pg)
    for data in (
        msg(codes.PARSE, b"\xff\xfe\0select 1\0\0\0"),
        msg(codes.PARSE, b"r\xff\0select 1\0\0\0"),  # a first byte the reserved-name check looks at
        fe.parse("", "select 1") + msg(codes.BIND, b"\xff\0\0\0\0\0\0\0\0"),
        fe.parse("", "select 1") + msg(codes.BIND, b"\0\xff\0\0\0\0\0\0\0"),
        msg(codes.DESCRIBE, b"S\xff\0"),
        msg(codes.DESCRIBE, b"P\xff\0"),
        msg(codes.CLOSE, b"S\xc3\0"),
        msg(codes.CLOSE, b"P\xc3\0"),
        msg(codes.EXECUTE, b"\xff\0\0\0\0\0"),
    ):
        replies = same_answer(conn, pg_conn, data + fe.SYNC)
        assert first_error(replies)["C"] == "22021", replies  # invalid byte sequence for encoding "UTF8"
    assert not protocol_warnings(log_lines)


@pytest.mark.parametrize("sql", [b"select $1::text", SWITCH])
def test_a_type_oid_of_2_31_or_more_gets_postgres_answer(
    proxy: RunningProxy, pg: Any, log_lines: pytest.LogCaptureFixture, sql: bytes
) -> None:
    """Postgres reads type OIDs unsigned: 2^31 + 5 is an OID no type has, not a malformed message."""
    conn, pg_conn = login(proxy.port), direct(pg)
    parse = msg(codes.PARSE, b"\0" + sql + b"\0" + types_list(1, BIG_OID))
    replies = same_answer(conn, pg_conn, parse + fe.SYNC)
    error = first_error(replies)
    assert error["S"] == "ERROR" and "rlsproxy" not in error["M"], error
    assert not protocol_warnings(log_lines)


# -- random input after a valid login --------------------------------------------------------------

NAMES = [b"", b"s1", b"p1", b"\xff", b"rlsproxy_ctx", b"R"]
SQL = [b"select 1", b"select $1::text", SWITCH, b"begin", b"commit", b"rollback", b"select pg_sleep(0)", b""]
KNOWN = [codes.QUERY, codes.PARSE, codes.BIND, codes.DESCRIBE, codes.CLOSE, codes.EXECUTE, codes.SYNC]
KNOWN += [codes.FLUSH, codes.FUNCTION_CALL]


@st.composite
def field_bytes(draw: st.DrawFn) -> bytes:
    """Pieces a body is made of: names, SQL, zero bytes, counts, OIDs, random bytes."""
    pieces = st.one_of(
        st.sampled_from(NAMES),
        st.sampled_from(SQL),
        st.just(b"\0"),
        st.sampled_from([b"S", b"P", b"X"]),
        st.integers(0, 0xFFFF).map(lambda n: struct.pack("!H", n)),
        st.sampled_from([25, 23, 0, BIG_OID, 0xFFFFFFFF]).map(lambda n: struct.pack("!I", n)),
        st.integers(-2, 8).map(lambda n: struct.pack("!i", n)),
        st.binary(max_size=12),
    )
    return b"".join(draw(st.lists(pieces, max_size=6)))


@st.composite
def client_message(draw: st.DrawFn) -> bytes:
    """A message with a right length word (so the stream stays in step: nothing waits for bytes),
    or one whose header Postgres refuses at once."""
    kind = draw(st.integers(0, 9))
    if kind == 0:  # an unknown type
        t = draw(st.integers(0, 255).filter(lambda t: t not in fe.KNOWN_TYPES))
        return header(t, draw(st.integers(0, 1 << 31)))
    if kind == 1:  # a length Postgres refuses for its type
        t = draw(st.sampled_from(sorted(fe.KNOWN_TYPES - fe.LARGE_TYPES)))
        return header(t, draw(st.one_of(st.integers(0, 3), st.integers(10_001, 1 << 31))))
    t = draw(st.sampled_from(KNOWN))
    # A Flush or Sync with a body: see test_a_flush_with_a_body_before_a_batch (left alone).
    return msg(t, b"" if t in (codes.FLUSH, codes.SYNC) else draw(field_bytes()))


SENTINEL = fe.query("rollback; select 'sentinel'")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(client_message(), min_size=1, max_size=4))
def test_random_input_gets_a_reply_or_a_protocol_violation(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture, messages: list[bytes]
) -> None:
    caplog.set_level(logging.INFO, logger="rlsproxy")
    conn = login(proxy.port)
    try:
        conn.send(b"".join(messages) + fe.SYNC + SENTINEL)
        replies: list[Message] = []
        closed = False
        while not closed:
            try:
                reply = conn.read()
            except ConnectionError:
                closed = True
                break
            replies.append(reply)
            if reply[0] == "D" and reply[1].endswith(b"sentinel"):
                assert conn.read()[0] in ("C", "E"), replies
                break
        for t, body in replies:
            if t == "E":
                error = error_fields((t, body))
                if error["C"] == "XX000":  # Postgres' own answer to a type OID no type has, never the proxy's
                    assert error["M"].startswith("cache lookup failed for type"), replies
                if error["S"] == "FATAL":
                    assert error["C"] == "08P01", replies
        if closed:  # only after a FATAL (no Terminate is sent)
            assert any(r[0] == "E" and error_fields(r)["S"] == "FATAL" for r in replies), replies
    finally:
        conn.close()
    assert_no_bug_logged(caplog)
    works(login(proxy.port))


@pytest.mark.parametrize("kind", [codes.FLUSH, codes.SYNC])
def test_a_flush_or_sync_with_a_body_is_refused(proxy: RunningProxy, kind: int) -> None:
    """Postgres answers a Flush or Sync with a body with ERROR 08P01 "invalid message format" and
    skips to the next Sync; the relay could not follow (the error would land on its own prefix),
    so it refuses the message as it refuses other malformed ones, and the session ends."""
    conn = login(proxy.port)
    conn.send(msg(kind, b"\0") + msg(codes.EXECUTE, b"\0\0\0\0\0") + fe.SYNC + SENTINEL)
    error = fatal_protocol_violation(conn)
    assert "no body" in error["M"], error
