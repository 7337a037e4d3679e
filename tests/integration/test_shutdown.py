"""SIGTERM drain with the real CLI (`python -m rlsproxy serve`): transactions in flight finish, idle
sessions and late ones get 57P01, no new connections, /readyz 503, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD
from rlsproxy.wire import backend as be
from tests.integration.conftest import token_for
from tests.support.ports import free_ports
from tests.support.proxy import JWT_SECRET, RunningProxy
from tests.support.rawpg import RawConnection

ROOT = Path(__file__).resolve().parents[2]


class Served:
    """`python -m rlsproxy serve` in a subprocess, with its own config file."""

    def __init__(self, pg: Any, directory: Path, shutdown_timeout_s: float) -> None:
        self.port, self.http_port = free_ports(2)
        config = directory / "rlsproxy.yaml"
        config.write_text(
            f"""
listen: {{host: 127.0.0.1, port: {self.port}}}
http: {{host: 127.0.0.1, port: {self.http_port}}}
upstream: {{host: "{pg.host}", port: {pg.port}, database: app, user: authenticator,
           password: "{AUTHENTICATOR_PASSWORD}"}}
jwt: {{secret: "{JWT_SECRET}"}}
limits: {{shutdown_timeout_s: {shutdown_timeout_s}}}
log: {{format: text}}
"""
        )
        self.log = directory / "rlsproxy.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "RLSPROXY_"))}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rlsproxy", "serve", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while self.readyz()[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rlsproxy serve did not come up:\n{self.log.read_text()}")
            time.sleep(0.1)

    def readyz(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def dsn(self) -> str:
        token = token_for(ALICE)
        return f"host=127.0.0.1 port={self.port} dbname=app user=app options='-c rlsproxy.jwt={token}'"

    def raw(self) -> RawConnection:
        return session(self.port)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"rlsproxy did not exit within {timeout}s:\n{self.log.read_text()}"
            ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def serve(pg: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(shutdown_timeout_s: float = 20) -> Served:
        served = Served(pg, tmp_path, shutdown_timeout_s)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def session(port: int) -> RawConnection:
    raw = RawConnection(
        port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    assert raw.greeting[-1][0] == "Z"
    return raw


def fatal_of(raw: RawConnection, within: float) -> dict[str, str]:
    """The FATAL ErrorResponse the proxy sends an idle session, read within `within` seconds."""
    raw.sock.settimeout(within)
    kind, body = raw.read()
    assert kind == "E", (kind, body)
    assert raw.closed_by_peer()
    return be.parse_fields(body)


def cleanup(pg: Any, title: str) -> None:
    pg.psql(f"delete from notes where title = '{title}'")


def test_sigterm_lets_the_transaction_commit_and_refuses_the_rest(serve: Any, pg: Any) -> None:
    served = serve(shutdown_timeout_s=20)
    title = f"written during shutdown {time.time()}"
    busy = psycopg.connect(served.dsn())
    idle = served.raw()
    outcome: dict[str, Any] = {}
    try:
        busy.execute("insert into notes (user_id, title) values (%s, %s)", (ALICE, title))

        def finish() -> None:
            try:
                busy.execute("select pg_sleep(2)")
                busy.commit()
                outcome["committed"] = True
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        worker = threading.Thread(target=finish)
        worker.start()
        time.sleep(0.5)  # pg_sleep is running
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)

        # the idle session is closed at once, with 57P01
        fields = fatal_of(idle, within=3)
        assert (fields["S"], fields["C"]) == ("FATAL", "57P01")
        assert fields["M"] == "terminating connection due to administrator command"
        assert time.monotonic() - signalled < 1.5
        # not ready any more, and no new connections
        assert served.readyz() == (503, "not ready: shutting down\n")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(served.dsn(), connect_timeout=3)

        worker.join(10)
        assert outcome == {"committed": True}
        # the session ended with its transaction
        with pytest.raises(psycopg.OperationalError):
            busy.execute("select 1")
        assert served.wait(10) == 0
        assert time.monotonic() - signalled < 10  # well before the 20 s timeout
        assert pg.psql(f"select count(*) from notes where title = '{title}'").strip() == "1"
    finally:
        busy.close()
        idle.close()
        cleanup(pg, title)
    assert "rlsproxy stopped" in served.log.read_text()


def test_sessions_still_in_a_transaction_at_the_timeout_are_closed(serve: Any, pg: Any) -> None:
    served = serve(shutdown_timeout_s=1)
    title = f"never committed {time.time()}"
    stuck = served.raw()
    try:
        stuck.send(be.message(ord("Q"), b"BEGIN\0"))
        stuck.until_ready()
        insert = f"insert into notes (user_id, title) values ('{ALICE}', '{title}')"
        stuck.send(be.message(ord("Q"), insert.encode() + b"\0"))
        assert stuck.until_ready()[-1] == ("Z", b"T")  # idle in transaction
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        fields = fatal_of(stuck, within=5)
        assert (fields["C"], fields["M"]) == ("57P01", "terminating connection due to administrator command")
        assert 0.9 < time.monotonic() - signalled < 4
        assert served.wait(10) == 0
        assert pg.psql(f"select count(*) from notes where title = '{title}'").strip() == "0"
    finally:
        stuck.close()
    assert "limits.shutdown_timeout_s reached: closing 1 sessions now" in served.log.read_text()


def test_a_second_sigterm_closes_at_once(serve: Any) -> None:
    served = serve(shutdown_timeout_s=60)
    stuck = served.raw()
    try:
        stuck.send(be.message(ord("Q"), b"BEGIN\0"))
        stuck.until_ready()
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert served.process.poll() is None  # waiting for the transaction
        served.process.send_signal(signal.SIGTERM)
        fields = fatal_of(stuck, within=5)
        assert fields["C"] == "57P01"
        assert served.wait(10) == 0
    finally:
        stuck.close()


def test_drain_in_process(proxy: RunningProxy) -> None:
    """Proxy.drain directly: idle sessions go at once, a transaction ends first, then drain returns."""
    idle, busy = session(proxy.port), session(proxy.port)
    try:
        busy.send(be.message(ord("Q"), b"BEGIN\0"))
        busy.until_ready()
        future = asyncio.run_coroutine_threadsafe(proxy.proxy.drain(10), proxy.loop)
        assert fatal_of(idle, within=3)["C"] == "57P01"
        assert not future.done()
        assert proxy.call(proxy.proxy.ready()) == (False, "shutting down")
        busy.send(be.message(ord("Q"), b"select 1\0"))
        assert busy.until_ready()[-1] == ("Z", b"T")  # still served inside its transaction
        busy.send(be.message(ord("Q"), b"COMMIT\0"))
        assert busy.until_ready()[-1] == ("Z", b"I")
        assert fatal_of(busy, within=3)["C"] == "57P01"
        assert future.result(5) is True
    finally:
        idle.close()
        busy.close()
