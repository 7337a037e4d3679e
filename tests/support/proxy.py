"""Run a real rlsproxy in a background thread (its own uvloop) against the test cluster."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import uvloop

from rlsproxy.app import build_proxy
from rlsproxy.config import (
    Config,
    HttpConfig,
    JwtConfig,
    LimitsConfig,
    ListenConfig,
    PoolConfig,
    RolesConfig,
    UpstreamConfig,
)
from rlsproxy.proxy import Proxy

T = TypeVar("T")

JWT_SECRET = "test-secret-for-rlsproxy-0123456789abcdef"


def base_config(pg: Any, **sections: Any) -> Config:
    from rlsproxy.devcluster import AUTHENTICATOR_PASSWORD

    config = Config(
        listen=ListenConfig(host="127.0.0.1", port=0),
        upstream=UpstreamConfig(
            host=pg.host, port=pg.port, database="app", user="authenticator", password=AUTHENTICATOR_PASSWORD
        ),
        pool=PoolConfig(max_size=10, acquire_timeout_ms=2000),
        jwt=JwtConfig(algorithms=("HS256",), secret=JWT_SECRET),
        roles=RolesConfig(allowed=("anon", "authenticated"), default="authenticated", anonymous="anon"),
        limits=LimitsConfig(startup_timeout_s=2.0),
        http=HttpConfig(host="127.0.0.1", port=0),  # any free port: tests run side by side
    )
    return replace(config, **sections)


class RunningProxy:
    """A proxy serving on 127.0.0.1:<port> until stop()."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.proxy: Proxy = build_proxy(config, config_path=config_path)
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("proxy did not start")
        self.port = self.proxy.port

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.proxy.start())
        started.set()
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def dsn(self, *, token: str | None = None, password: str | None = None, **params: str) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname=app user=app connect_timeout=5"]
        if token is not None:
            parts.append(f"options='-c rlsproxy.jwt={token}'")
        if password is not None:
            parts.append(f"password={password}")
        parts += [f"{k}={v}" for k, v in params.items()]
        return " ".join(parts)
