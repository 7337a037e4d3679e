"""Connection churn from Python: connect, one query, disconnect, as fast as a few workers can.

Through rlsproxy every connection carries its own freshly minted token (new `sub` and `jti`), so
the proxy verifies a signature on every connect instead of hitting its token cache: the cost of
a real client population that reconnects, not of one client reconnecting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import uvloop

from bench.proxy import JWT_SECRET
from bench.result import RunResult
from bench.stack import RLSPROXY_TARGETS, TOKEN_TTL_S, Endpoint
from rlsproxy.auth.mint import mint_token

WORKERS = 8
_MAX_ERRORS = 200  # a target refusing every connect should not spin for the whole duration


def fresh_token() -> str:
    return mint_token(
        JWT_SECRET,
        sub=str(uuid.uuid4()),
        role="authenticated",
        ttl_s=TOKEN_TTL_S,
        extra={"jti": uuid.uuid4().hex},
    )


def run_churn(endpoint: Endpoint, duration_s: float, workers: int = WORKERS) -> RunResult:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_churn(_connector(endpoint), duration_s, workers))


def _connector(endpoint: Endpoint) -> Callable[[], Awaitable[asyncpg.Connection]]:
    def connect() -> Awaitable[asyncpg.Connection]:
        settings = {"rlsproxy.jwt": fresh_token()} if endpoint.target in RLSPROXY_TARGETS else {}
        connecting: Awaitable[asyncpg.Connection] = asyncpg.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=endpoint.user,
            database=endpoint.dbname,
            password=endpoint.env.get("PGPASSWORD"),
            server_settings=settings,
            ssl=False,
            timeout=10,
        )
        return connecting

    return connect


async def _churn(
    connect: Callable[[], Awaitable[asyncpg.Connection]], duration_s: float, workers: int
) -> RunResult:
    done = 0
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline and sum(errors.values()) < _MAX_ERRORS:
            try:
                conn = await connect()
                try:
                    await conn.execute("SELECT 1")  # simple protocol: no prepare on the client side
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                errors[f"{type(exc).__name__}: {exc}"] += 1
            else:
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.monotonic() - started
    shown = [f"{count}x {message}" for message, count in errors.most_common(5)]
    return RunResult(
        done / elapsed, done, shown, {"workers": workers, "failed_connects": sum(errors.values())}
    )
