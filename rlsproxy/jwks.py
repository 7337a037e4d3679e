"""Fetching jwt.jwks_url: at start, every jwt.jwks_refresh_s, and when a token names an unknown kid.

The HTTPS request runs in a thread (urllib); parsing and key selection are rlsproxy.auth.keys'
(RemoteKeys, shared with the KeyStore). A failed fetch keeps the last good set. An unknown kid
triggers at most one extra fetch per MISS_INTERVAL_S; the connection that carried it waits for that
fetch at most HANDSHAKE_WAIT_S, so a rotated-in key works on its first use and an unknown kid cannot
hold connections or hammer the issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from rlsproxy import __version__
from rlsproxy.auth.keys import KeyStore, RemoteKeys
from rlsproxy.metrics import Metrics
from rlsproxy.tls import client_context

log = logging.getLogger("rlsproxy.jwks")

MISS_INTERVAL_S = 30.0  # at most one fetch per this long for unknown kids
HANDSHAKE_WAIT_S = 2.0  # the longest a connection waits for a fetch its token triggered
FETCH_TIMEOUT_S = 5.0
UNLOADED_RETRY_S = 10.0  # until the first success, fetch at least this often
MAX_DOCUMENT_BYTES = 1 << 20


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith("https://"):
            raise ValueError(f"redirected to a non-https URL ({newurl[:100]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, context: ssl.SSLContext, timeout_s: float = FETCH_TIMEOUT_S) -> str:
    """GET the document (blocking; run it in a thread). Raises OSError/ValueError with the reason."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects())
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": f"rlsproxy/{__version__}"}
    )
    with opener.open(request, timeout=timeout_s) as response:
        body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    return body.decode("utf-8")


class JwksFetcher:
    """Keeps a RemoteKeys current; start() in the running loop, close() when done."""

    def __init__(
        self,
        url: str,
        keys: RemoteKeys,
        metrics: Metrics,
        *,
        refresh_s: float,
        ca_file: str | None = None,
        on_removed: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.keys = keys
        self.refresh_s = refresh_s
        self.miss_interval_s = MISS_INTERVAL_S
        self.handshake_wait_s = HANDSHAKE_WAIT_S
        self._metrics = metrics
        self._context = client_context(ca_file)
        self._on_removed = on_removed
        self._inflight: asyncio.Task[bool] | None = None
        self._last_miss = -math.inf
        self._task: asyncio.Task[None] | None = None
        keys.on_miss = self.request

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        self.keys.on_miss = None
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        while True:
            await self.refresh()
            delay = self.refresh_s if self.keys.loaded else min(self.refresh_s, UNLOADED_RETRY_S)
            await asyncio.sleep(delay)

    def refresh(self) -> asyncio.Future[bool]:
        """Fetch now, or join the fetch under way; resolves True when the set was replaced."""
        return asyncio.shield(self._start())

    def _start(self) -> asyncio.Task[bool]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    def request(self) -> bool:
        """A token needs a key the set lacks: fetch again, unless one was asked for too recently.

        True when a fetch is under way afterwards.
        """
        if self._inflight is not None and not self._inflight.done():
            return True
        now = time.monotonic()
        if now - self._last_miss < self.miss_interval_s:
            return False
        self._last_miss = now
        self._start()
        return True

    async def await_for(self, keystore: KeyStore, token: str, wait_s: float | None = None) -> None:
        """Before `token` is verified: if it needs a fresher set, fetch (rate limited) and wait briefly.

        The wait is handshake_wait_s, or `wait_s` when that is shorter.
        """
        if not keystore.wants_refresh(token) or not self.request():
            return
        limit = self.handshake_wait_s if wait_s is None else min(wait_s, self.handshake_wait_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refresh(), limit)

    async def _fetch(self) -> bool:
        try:
            text = await asyncio.to_thread(fetch, self.url, self._context)
            removed = self.keys.load(text)
        except Exception as exc:  # whatever went wrong, the last good set stays in force
            reason = getattr(exc, "reason", None) or exc
            log.warning(
                "could not fetch jwt.jwks_url %s: %s; keeping the last good set (%d keys)",
                self.url,
                reason,
                len(self.keys.keys),
            )
            self._metrics.jwks_refreshed(False, len(self.keys.keys))
            return False
        self._metrics.jwks_refreshed(True, len(self.keys.keys))
        log.info("fetched jwt.jwks_url %s: %d keys", self.url, len(self.keys.keys))
        if removed and self._on_removed is not None:
            self._on_removed()  # tokens verified by a withdrawn key must be verified again
        return True
