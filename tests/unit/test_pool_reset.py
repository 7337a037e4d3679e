"""A released connection's reset: reused when its reply comes, closed when none comes in time.

The reset has no timer of its own: Proxy's sweep calls Pool.expire_resets about every second.
The integration tests run resets against a real Postgres; a server that never answers is what
they cannot produce, so here the connection has a transport that records writes and nothing answers.
"""

from __future__ import annotations

import asyncio
import time

from rlsproxy.config import PoolConfig, UpstreamConfig
from rlsproxy.pool import DISCARD_ALL, RESET_TIMEOUT_S, Pool, ServerConnection
from rlsproxy.session.server import ServerState, UpstreamLogin
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes

DISCARD_ALL_DONE = be.message(codes.COMMAND_COMPLETE, b"DISCARD ALL\0") + be.ready_for_query(codes.TX_IDLE)


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def _released() -> tuple[Pool, ServerConnection, _Transport]:
    """A pool with one logged-in connection, just released by its client."""
    pool = Pool("users", UpstreamConfig(sslmode="disable"), PoolConfig(max_size=2), user="u", password=None)
    conn = ServerConnection(UpstreamLogin("u", None, "db", {}))
    transport = _Transport()
    conn.transport = transport  # type: ignore[assignment]
    conn._login = None  # logged in: what it reads now goes to its state
    conn.state = ServerState({}, 1, b"key")
    pool._in_use.add(conn)
    pool.release(conn, reusable=True)
    return pool, conn, transport


def test_a_reset_that_is_answered_makes_the_connection_idle() -> None:
    async def run() -> None:
        pool, conn, transport = _released()
        assert transport.written == [DISCARD_ALL]
        assert pool.size == 1 and pool.idle_count == 0
        conn.data_received(DISCARD_ALL_DONE)
        assert pool.idle_count == 1 and not conn.closed
        pool.expire_resets(time.monotonic() + RESET_TIMEOUT_S + 1)  # ended already: nothing to expire
        assert pool.idle_count == 1 and not conn.closed

    asyncio.run(run())


def test_a_reset_without_an_answer_is_closed_at_its_deadline_not_before() -> None:
    async def run() -> None:
        pool, conn, transport = _released()
        pool.expire_resets(time.monotonic() + RESET_TIMEOUT_S - 1)
        assert not conn.closed and pool.size == 1
        pool.expire_resets(time.monotonic() + RESET_TIMEOUT_S + 1)
        assert conn.closed and transport.closed
        assert pool.size == 0 and pool.idle_count == 0  # room for a new connection
        conn.data_received(DISCARD_ALL_DONE)  # a reply after the deadline changes nothing
        assert pool.size == 0 and pool.idle_count == 0

    asyncio.run(run())


# A client that arrives while a connection started with its settings is being reset waits for that
# one, even with room in the pool: no new connection, whatever the timing (issue 17).


def _fresh(baseline: tuple[tuple[str, str], ...] = ()) -> ServerConnection:
    conn = ServerConnection(UpstreamLogin("u", None, "db", {}), baseline)
    conn.transport = _Transport()  # type: ignore[assignment]
    conn._login = None
    conn.state = ServerState({}, 1, b"key")
    return conn


def _counting_connects(pool: Pool) -> list[ServerConnection]:
    opened: list[ServerConnection] = []

    async def connect(baseline: tuple[tuple[str, str], ...] = ()) -> ServerConnection:
        conn = _fresh(baseline)
        opened.append(conn)
        return conn

    pool._connect = connect  # type: ignore[method-assign]
    return opened


def test_a_client_waits_for_the_reset_of_its_settings_connection_instead_of_opening_one() -> None:
    async def run() -> None:
        pool, conn, _ = _released()
        opened = _counting_connects(pool)
        acquiring = asyncio.ensure_future(pool.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not acquiring.done() and opened == []  # room for one more, yet it waits
        conn.data_received(DISCARD_ALL_DONE)  # the reset ends
        assert await acquiring is conn
        assert opened == [] and pool.in_use_count == 1 and pool.size == 1

    asyncio.run(run())


def test_a_failed_reset_sends_its_waiters_to_a_new_connection() -> None:
    async def run() -> None:
        pool, conn, _ = _released()
        opened = _counting_connects(pool)
        acquiring = asyncio.ensure_future(pool.acquire())
        for _ in range(5):
            await asyncio.sleep(0)
        pool.expire_resets(time.monotonic() + RESET_TIMEOUT_S + 1)  # no answer: closed
        got = await acquiring
        assert conn.closed and opened == [got] and pool.size == 1

    asyncio.run(run())


def test_a_reset_that_outlasts_the_acquire_deadline_then_a_new_connection() -> None:
    async def run() -> None:
        pool, conn, _ = _released()
        pool._cfg = PoolConfig(max_size=2, acquire_timeout_ms=50)
        opened = _counting_connects(pool)
        got = await pool.acquire()
        assert opened == [got] and not conn.closed and pool.size == 2

    asyncio.run(run())


def test_a_client_with_other_settings_does_not_wait() -> None:
    async def run() -> None:
        pool, conn, _ = _released()
        opened = _counting_connects(pool)
        settings = (("application_name", "reports"),)
        got = await pool.acquire(settings, known_good=True)
        assert opened == [got] and got.baseline == settings and pool.size == 2
        conn.data_received(DISCARD_ALL_DONE)
        assert pool.idle_count == 1

    asyncio.run(run())
