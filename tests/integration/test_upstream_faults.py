"""An upstream that hangs at login: every connection the proxy opens is in its pool or closed."""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.support.proxy import base_config


class FrozenUpstream:
    """Accepts connections and never answers: a PostgreSQL stuck before its first login reply."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted.append(conn)

    def still_open(self) -> int:
        """How many accepted connections the peer has not closed (what they sent is read and dropped)."""
        with self._lock:
            conns = list(self.accepted)
        open_ = 0
        for conn in conns:
            if conn.fileno() < 0:
                continue
            readable, _, _ = select.select([conn], [], [], 0)
            while readable:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    conn.close()
                    break
                readable, _, _ = select.select([conn], [], [], 0)
            else:
                open_ += 1
        return open_

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for conn in self.accepted:
                conn.close()


def test_a_login_that_takes_too_long_is_closed_not_left_behind(make_proxy: Any, pg: Any) -> None:
    frozen = FrozenUpstream()
    try:
        config = base_config(pg)
        upstream = replace(config.upstream, host="127.0.0.1", port=frozen.port, connect_timeout_s=0.5)
        proxy = make_proxy(replace(config, upstream=upstream))
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError, match=r"no login within 0\.5 s"):
                psycopg.connect(proxy.dsn(token=token_for(ALICE)))
        deadline = time.monotonic() + 10
        while frozen.still_open() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for a condition, bounded: not waiting for luck
        assert len(frozen.accepted) >= 3  # the proxy did try, once per client at least
        assert frozen.still_open() == 0  # and closed every login it gave up on
    finally:
        frozen.close()
