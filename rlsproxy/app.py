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
    """Serve until `stop` is set; each `hangup` (SIGHUP) reopens the audit log and reloads the config."""
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
    log.info("rlsproxy stopping")
    await proxy.close()
