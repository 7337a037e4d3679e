"""The same conversation, direct to Postgres and through the proxy, byte for byte where it matters.

The proxy injects a context prefix ahead of each transaction; the client must not be able to tell:
same messages, same command tags, same error fields and positions, same ReadyForQuery statuses.
"""

from __future__ import annotations

from typing import Any

import pytest

from rlsproxy.devcluster import ALICE
from rlsproxy.wire import backend as be
from rlsproxy.wire import frontend as fe
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy
from tests.support.rawpg import Message, RawConnection


def copy_data(payload: bytes) -> bytes:
    return b"d" + (len(payload) + 4).to_bytes(4, "big") + payload


COPY_DONE = b"c\x00\x00\x00\x04"

# (bytes to send, number of ReadyForQuery to wait for)
CONVERSATION: list[tuple[bytes, int]] = [
    (fe.query("select 1 as a; select 'x' as b"), 1),
    (fe.query("select 1/0"), 1),
    (fe.query("select * from no_such_table"), 1),
    (fe.query("selec 1"), 1),
    (fe.query("select 'ü', 'x' frm"), 1),
    (fe.query(""), 1),
    (fe.query("begin"), 1),
    (fe.query("select 1/0"), 1),
    (fe.query("select 1"), 1),
    (fe.query("rollback"), 1),
    (fe.query("begin; select 1"), 1),
    (fe.query("commit"), 1),
    (fe.query("do $$ begin raise notice 'hello %', 1; end $$"), 1),
    (fe.query("copy (values (1, 'a'), (2, null)) to stdout"), 1),
    (fe.query("create temp table parity (x int)"), 1),
    (
        fe.parse("", "select 1")
        + fe.bind("", ())
        + fe.execute()
        + fe.parse("", "select 1/0")
        + fe.bind("", ())
        + fe.execute()
        + fe.parse("", "select 2")
        + fe.bind("", ())
        + fe.execute()
        + fe.SYNC
        + fe.parse("s1", "select $1::int + 1", (23,))
        + fe.bind("", ("41",))
        + fe.execute()
        + fe.SYNC
        + fe.bind("", ("1",))
        + fe.execute()
        + fe.SYNC,
        3,
    ),
    (fe.parse("", "begin") + fe.bind("", ()) + fe.execute() + fe.SYNC, 1),
    (fe.parse("", "select 3") + fe.bind("", ()) + fe.execute() + fe.SYNC, 1),
    (fe.query("commit"), 1),
    (fe.query("select 'back to idle'"), 1),
]


def normalise(messages: list[Message]) -> list[tuple[str, Any]]:
    """Keep what a client relies on; drop what differs by nature (ParameterStatus values)."""
    out: list[tuple[str, Any]] = []
    for t, body in messages:
        if t == "S":
            continue
        if t in ("E", "N"):
            fields = be.parse_fields(body)
            out.append((t, {k: fields.get(k) for k in ("S", "C", "M", "P", "D", "H")}))
        else:
            out.append((t, body))
    return out


def converse(conn: RawConnection) -> list[list[tuple[str, Any]]]:
    transcript = []
    for data, readies in CONVERSATION:
        conn.send(data)
        transcript.append(normalise(conn.until_ready(readies)))
    # COPY FROM STDIN into the temp table, simple protocol.
    conn.send(fe.query("copy parity from stdin"))
    first = conn.read()
    assert first[0] == "G"
    conn.send(copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE)
    transcript.append(normalise([first, *conn.until_ready()]))
    conn.send(fe.query("select sum(x) from parity"))
    transcript.append(normalise(conn.until_ready()))
    # The same through the extended protocol, the way libpq does it: Parse/Bind/Describe/Execute/Sync
    # in one go (that Sync is ignored during copy-in), then the data, CopyDone and another Sync.
    describe_portal = b"D\x00\x00\x00\x06P\x00"
    for rows, ending in ((b"3\n", COPY_DONE), (b"oops\n", COPY_DONE), (b"4\n", b"f\x00\x00\x00\x09halt\x00")):
        conn.send(
            fe.parse("", "copy parity from stdin")
            + fe.bind("", ())
            + describe_portal
            + fe.execute()
            + fe.SYNC
        )
        head = [conn.read()]
        while head[-1][0] not in ("G", "E"):
            head.append(conn.read())
        assert head[-1][0] == "G", head
        conn.send(copy_data(rows) + ending + fe.SYNC)
        transcript.append(normalise([*head, *conn.until_ready()]))
    conn.send(fe.query("select sum(x), count(*) from parity"))
    transcript.append(normalise(conn.until_ready()))
    return transcript


def test_conversation_matches_direct_postgres(proxy: RunningProxy, pg: Any) -> None:
    direct = RawConnection(pg.port, {"user": "postgres", "database": "app"})
    proxied = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        want = converse(direct)
        got = converse(proxied)
    finally:
        direct.close()
        proxied.close()
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, f"step {i}: {CONVERSATION[i][0][:60]!r}"


@pytest.mark.parametrize("minor", [1, 2])
def test_newer_protocol_minor_is_negotiated_down(proxy: RunningProxy, minor: int) -> None:
    import socket
    import struct

    params = b"user\0app\0database\0app\0options\0-c rlsproxy.jwt=" + token_for(ALICE).encode() + b"\0\0"
    packet = struct.pack("!ii", 8 + len(params), (3 << 16) | minor) + params
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    try:
        sock.sendall(packet)
        data = b""
        while b"Z\x00\x00\x00\x05I" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data[:1] == b"v"
        assert data[5:13] == b"\x00\x00\x00\x00\x00\x00\x00\x00"  # newest minor 0, no unknown options
    finally:
        sock.close()
