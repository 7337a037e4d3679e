"""Which pooled server connection may serve a client's startup settings, and what it must be sent."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from rlsproxy.config import PoolConfig, UpstreamConfig
from rlsproxy.pool import Pool, ServerConnection, serves_without_leak, settings_exchange, settings_messages
from rlsproxy.session.server import UpstreamLogin

APP = (("application_name", "reports"),)
APP_AND_PATH = (("application_name", "reports"), ("search_path", "leaky,public"))


def test_a_connection_started_with_the_same_settings_needs_nothing() -> None:
    assert settings_exchange(APP_AND_PATH, APP_AND_PATH) == b""
    assert settings_exchange((), ()) == b""


def test_any_other_connection_gets_every_setting_of_the_client() -> None:
    assert settings_exchange((), APP) == settings_messages(APP)
    assert settings_exchange(APP, APP_AND_PATH) == settings_messages(APP_AND_PATH)
    # The same names in another order are another startup packet: set them all.
    assert settings_exchange(APP_AND_PATH, APP_AND_PATH[::-1]) == settings_messages(APP_AND_PATH[::-1])


def test_startup_settings_the_client_does_not_override_would_leak() -> None:
    assert serves_without_leak((), APP)
    assert serves_without_leak(APP, APP_AND_PATH)  # the client sets application_name itself
    assert serves_without_leak(APP_AND_PATH, (("search_path", "x"), ("application_name", "y")))
    assert not serves_without_leak(APP_AND_PATH, APP)  # search_path=leaky would stay
    assert not serves_without_leak(APP, ())


def _idle(baseline: tuple[tuple[str, str], ...]) -> ServerConnection:
    """An idle pooled connection started with `baseline`, never connected: what try_acquire looks at."""
    return ServerConnection(UpstreamLogin("u", None, "db", dict(baseline)), baseline)


def _pool(max_size: int, *idle: ServerConnection) -> Pool:
    config = PoolConfig(max_size=max_size)
    pool = Pool("users", UpstreamConfig(sslmode="disable"), config, user="u", password=None)
    pool._idle.extend(idle)
    return pool


def _in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A ServerConnection belongs to a running event loop."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


@_in_loop
async def test_the_pool_prefers_a_connection_started_with_the_clients_settings() -> None:
    plain, same = _idle(()), _idle(APP)
    pool = _pool(5, same, plain)
    assert pool.try_acquire(APP, known_good=True) is same  # not the newer one
    assert pool.in_use_count == 1 and list(pool._idle) == [plain]


@_in_loop
async def test_with_room_known_settings_get_a_new_connection_instead_of_an_exchange() -> None:
    pool = _pool(5, _idle(()))
    assert pool.try_acquire(APP, known_good=True) is None  # acquire() then connects with APP
    assert pool.idle_count == 1
    # Settings no server has accepted yet are never put in a startup packet: the idle one serves.
    assert pool.try_acquire(APP, known_good=False) is not None


@_in_loop
async def test_a_full_pool_reuses_what_serves_without_leaking_and_replaces_what_would_leak() -> None:
    leaky = _idle(APP_AND_PATH)
    pool = _pool(1, leaky)
    assert pool.try_acquire(APP, known_good=True) is None  # search_path would leak: not given
    assert leaky.closed and pool.idle_count == 0 and pool.size == 0  # room for a new connection
    overridable = _idle(APP)
    pool = _pool(1, overridable)
    assert pool.try_acquire(APP_AND_PATH, known_good=True) is overridable  # all overridden: reused
