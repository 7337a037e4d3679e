"""Wiring: build the proxy from a Config and run it until told to stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rlsproxy.config import Config
from rlsproxy.proxy import Proxy

log = logging.getLogger("rlsproxy")


def build_proxy(config: Config, base_dir: Path | None = None, config_path: str | None = None) -> Proxy:
    return Proxy(config, base_dir=base_dir, config_path=config_path)


async def run(config: Config, path: str, stop: asyncio.Event, hangup: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set, then drain (see shutdown); each `hangup` (SIGHUP) reopens the audit log
    and reloads the config."""
    proxy = build_proxy(config, Path(path).parent, config_path=path)
    await proxy.start()
    log.info("rlsproxy listening on %s:%d", config.listen.host, proxy.port)
    if proxy.http is not None:
        log.info("http endpoints on %s:%d", config.http.host, proxy.http.port)
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait())]
        if hangup is not None:
            waiters.append(asyncio.ensure_future(hangup.wait()))
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if hangup is not None and hangup.is_set():
            hangup.clear()
            proxy.reopen_audit()
            await proxy.reload()
    await shutdown(proxy, stop)


async def shutdown(proxy: Proxy, stop: asyncio.Event) -> None:
    """Drain for up to limits.shutdown_timeout_s, then close whoever is left with 57P01.

    `stop` set again (a second SIGTERM or Ctrl-C) cuts the drain short.
    """
    timeout = proxy.config.limits.shutdown_timeout_s
    log.info(
        "rlsproxy stopping: no new connections; sessions end with their transaction (at most %gs)", timeout
    )
    stop.clear()
    drain = asyncio.ensure_future(proxy.drain(timeout))
    again = asyncio.ensure_future(stop.wait())
    await asyncio.wait([drain, again], return_when=asyncio.FIRST_COMPLETED)
    again.cancel()
    if not drain.done():
        drain.cancel()
        log.warning("stop signal repeated: closing %d sessions now", len(proxy.clients))
    elif not drain.result():
        log.warning("limits.shutdown_timeout_s reached: closing %d sessions now", len(proxy.clients))
    await proxy.close()
    log.info("rlsproxy stopped")
