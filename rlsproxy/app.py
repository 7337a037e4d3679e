"""Wiring: build the proxy from a Config and run it until told to stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rlsproxy.auth.identity import Authenticator
from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore
from rlsproxy.config import Config
from rlsproxy.server import Proxy
from rlsproxy.session.guard import Guard
from rlsproxy.session.relay import Classifier

log = logging.getLogger("rlsproxy")


def build_proxy(config: Config, base_dir: Path | None = None) -> Proxy:
    keys = KeyStore.from_config(config.jwt, base_dir=base_dir)
    verifier = TokenVerifier(config.jwt, keys, cache_size=config.jwt.cache_size)
    authenticator = Authenticator(config.jwt, config.roles, config.services, verifier)
    classifier = Classifier(Guard(config.limits.guard_cache_size), config.limits.guard_cache_size)
    return Proxy(config, authenticator, classifier)


async def run(config: Config, path: str, stop: asyncio.Event) -> None:
    proxy = build_proxy(config, Path(path).parent)
    await proxy.start()
    log.info("rlsproxy listening on %s:%d", config.listen.host, proxy.port)
    await stop.wait()
    log.info("rlsproxy stopping")
    await proxy.close()
