"""Wiring: build the proxy from a Config and run it until told to stop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from pathlib import Path

from rlsproxy.config import Config
from rlsproxy.proxy import Proxy

log = logging.getLogger("rlsproxy")


class ListenError(Exception):
    """A listener could not be opened (a port in use, an address not on this host): one line naming
    the config key and the address."""


def listen_error(key: str, host: str, port: int, exc: OSError) -> ListenError:
    """`key` is the section (listen, http); the line names its port or its host, whichever is wrong."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        why = exc.strerror or str(exc)
    else:
        why = os.strerror(exc.errno)
    field = "port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
    return ListenError(f"{key}.{field}: cannot listen on {host}:{port}: {why.lower()}")


def build_proxy(config: Config, base_dir: Path | None = None, config_path: str | None = None) -> Proxy:
    return Proxy(config, base_dir=base_dir, config_path=config_path)


async def run(config: Config, path: str, stop: asyncio.Event, hangup: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set, then drain (see shutdown); each `hangup` (SIGHUP) reopens the audit log
    and reloads the config."""
    proxy = build_proxy(config, Path(path).parent, config_path=path)
    try:
        await proxy.start()
    except OSError as exc:
        # Proxy.start opens the client listener first, then sets proxy.http and opens that one.
        if proxy.http is not None:
            key, host, port = "http", config.http.host, config.http.port
        else:
            key, host, port = "listen", config.listen.host, config.listen.port
        await proxy.close()
        raise listen_error(key, host, port, exc) from None
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
