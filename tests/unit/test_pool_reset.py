"""A released connection's reset: reused when its reply comes, closed when none comes in time.

The reset has no timer of its own: Proxy's sweep calls Pool.expire_resets about every second.
The integration tests run resets against a real Postgres; a server that never answers is what
they cannot produce, so here the connection has a transport that records writes and nothing answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from rlsproxy.config import PoolConfig, UpstreamConfig
from rlsproxy.errors import UpstreamUnavailable
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


def _released(
    config: PoolConfig | None = None, on_connect_error: Callable[[], None] | None = None
) -> tuple[Pool, ServerConnection, _Transport]:
    """A pool with one logged-in connection, just released by its client. Port 1: nothing listens,
    so a connection the pool opens fails at once (and calls `on_connect_error`)."""
    pool = Pool(
        "users",
        UpstreamConfig(host="127.0.0.1", port=1, sslmode="disable"),
        config or PoolConfig(max_size=2),
        user="u",
        password=None,
        on_connect_error=on_connect_error,
    )
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
# one, even with room in the pool: no new connection, whatever the timing (issue 17). The pool's
# upstream refuses connections, so an attempt to open one shows as UpstreamUnavailable.


def _with_attempts(config: PoolConfig | None = None) -> tuple[Pool, ServerConnection, list[int]]:
    attempts: list[int] = []
    pool, conn, _ = _released(config, on_connect_error=lambda: attempts.append(1))
    return pool, conn, attempts


def test_a_client_waits_for_the_reset_of_its_settings_connection_instead_of_opening_one() -> None:
    async def run() -> None:
        pool, conn, attempts = _with_attempts()
        acquiring = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not acquiring.done() and attempts == []  # room for one more, yet it waits
        conn.data_received(DISCARD_ALL_DONE)  # the reset ends
        assert await acquiring is conn
        assert attempts == [] and pool.in_use_count == 1 and pool.size == 1

    asyncio.run(run())


def test_a_failed_reset_sends_its_waiters_to_a_new_connection() -> None:
    async def run() -> None:
        pool, conn, attempts = _with_attempts()
        acquiring = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        pool.expire_resets(time.monotonic() + RESET_TIMEOUT_S + 1)  # no answer: closed
        with pytest.raises(UpstreamUnavailable):
            await acquiring
        assert conn.closed and attempts == [1]

    asyncio.run(run())


def test_a_reset_that_outlasts_the_acquire_deadline_then_a_new_connection() -> None:
    async def run() -> None:
        pool, conn, attempts = _with_attempts(PoolConfig(max_size=2, acquire_timeout_ms=50))
        start = time.monotonic()
        with pytest.raises(UpstreamUnavailable):
            await pool.acquire()
        assert time.monotonic() - start >= 0.045 and attempts == [1] and not conn.closed

    asyncio.run(run())


def test_a_client_with_other_settings_does_not_wait() -> None:
    async def run() -> None:
        pool, conn, attempts = _with_attempts()
        with pytest.raises(UpstreamUnavailable):
            await pool.acquire((("application_name", "reports"),), known_good=True)
        assert attempts == [1]
        conn.data_received(DISCARD_ALL_DONE)
        assert pool.idle_count == 1

    asyncio.run(run())
