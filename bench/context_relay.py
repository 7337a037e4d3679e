"""The bare relay plus the RLS context: the floor under any Python/uvloop proxy that sets it.

A benchmark target for pgbench -S only, where every client write is one whole transaction. In
front of each such write it puts rlsproxy's own prebuilt context prefix (Bind+Execute of the
context statement, the statement prepared on first use), and it strips the prefix's known replies
from the front of the server's answer. A simple Query is sent as Parse/Bind/Describe/Execute/Sync,
as rlsproxy must on PostgreSQL 17+ (docs/architecture.md). Nothing else: no framing, no guard, no
queue of expected replies, no pool. So Postgres does exactly rlsproxy's per-transaction work and
the relay the least Python any proxy doing it could: rlsproxy's CPU above this target is the cost
of its session logic, and this target's throughput is as close to PgBouncer as such a proxy gets.

A reply that does not start as expected (an error, a read cut short) closes the client, so a
misuse shows as failed pgbench runs rather than as wrong figures.

    python -m bench.context_relay LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT ROLE CLAIMS_JSON
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections import deque
from pathlib import Path

import uvloop

from bench.bare_relay import HOST, Client, RelayProcess, Upstream
from rlsproxy.session import context
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.backend import message

_TRANSLATED_TAIL = fe.bind("", ()) + message(codes.DESCRIBE, b"P\0") + fe.execute() + fe.SYNC
_PARSED_AND_BOUND = message(codes.PARSE_COMPLETE, b"") + message(codes.BIND_COMPLETE, b"")
_STARTED = b"Z\0\0\0\x05I"  # the first ReadyForQuery ends the login: transactions follow


def _column(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!i", len(raw)) + raw


class _Context:
    """The prefix and the replies it gets, for one identity (built once)."""

    def __init__(self, role: str, claims_json: str) -> None:
        prefix = context.context_prefix(role, claims_json).plain
        reply = (
            message(codes.BIND_COMPLETE, b"")
            + message(codes.DATA_ROW, struct.pack("!h", 2) + _column(role) + _column(claims_json))
            + message(codes.COMMAND_COMPLETE, b"SELECT 1\0")
        )
        self.first = context.PLAIN.parse + prefix  # the statement is prepared on first use
        self.first_reply = message(codes.PARSE_COMPLETE, b"") + reply
        self.prefix = prefix
        self.reply = reply


class _ContextUpstream(Upstream):
    client: _ContextClient

    def data_received(self, data: bytes) -> None:
        client = self.client
        strip = client.strip
        if strip:
            expected = strip[0]
            if not data.startswith(expected):
                if not expected.startswith(data):
                    print(f"unexpected reply {data[:60]!r}", file=sys.stderr)
                    assert client.transport is not None
                    client.transport.close()
                    return
                strip[0] = expected[len(data) :]  # the prefix's replies came in pieces
                return
            strip.popleft()
            data = data[len(expected) :]
        elif not client.started and data.endswith(_STARTED):
            client.started = True
        if data:
            super().data_received(data)


class _ContextClient(Client):
    def __init__(self, upstream: tuple[str, int], ctx: _Context) -> None:
        super().__init__(upstream)
        self.ctx = ctx
        self.started = False
        self.prepared = False
        self.strip: deque[bytes] = deque()  # the replies to strip, one per transaction sent

    def make_upstream(self) -> Upstream:
        return _ContextUpstream(self)

    def data_received(self, data: bytes) -> None:
        if self.started and data[:1] in (b"Q", b"P", b"B"):  # a transaction (pgbench -S)
            ctx = self.ctx
            if self.prepared:
                prefix, reply = ctx.prefix, ctx.reply
            else:
                prefix, reply = ctx.first, ctx.first_reply
                self.prepared = True
            if data[0] == codes.QUERY:
                data = prefix + message(codes.PARSE, b"\0" + data[5:] + b"\0\0") + _TRANSLATED_TAIL
                reply += _PARSED_AND_BOUND
            else:
                data = prefix + data
            self.strip.append(reply)
        super().data_received(data)


async def _serve(port: int, upstream: tuple[str, int], ctx: _Context) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ContextClient(upstream, ctx), HOST, port)
    await server.serve_forever()


class ContextRelayProcess(RelayProcess):
    """The context relay as a process of its own, for one identity (role and claims)."""

    module = "bench.context_relay"

    def __init__(self, upstream_host: str, upstream_port: int, role: str, claims: str, workdir: Path) -> None:
        super().__init__(upstream_host, upstream_port, workdir, role, claims)


if __name__ == "__main__":
    port, host, upstream_port, role, claims = sys.argv[1:6]
    uvloop.run(_serve(int(port), (host, int(upstream_port)), _Context(role, claims)))
