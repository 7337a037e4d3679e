"""Reload (POST /reload, SIGHUP): new rules for new connections, nobody dropped, bad files refused."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import load_config
from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD, SERVICE_LOGIN_PASSWORD
from tests.integration.conftest import token_for
from tests.integration.test_bypass_audit import connect, service_token
from tests.support.ports import free_ports
from tests.support.proxy import JWT_SECRET, RunningProxy

SERVICES = """
services:
  - name: nightly-sync
    match: {sub: "svc:nightly-sync", iss: "https://auth.example.com"}
    roles: [service_role]
    labels: ["job:nightly-*"]
"""


PORTS: dict[Path, tuple[int, int]] = {}


def write_config(path: Path, pg: Any, *, services: bool, extra: str = "") -> None:
    listen, http = PORTS.setdefault(path, free_ports(2))
    path.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {listen}}}
http: {{host: 127.0.0.1, port: {http}}}
upstream: {{host: "{pg.host}", port: {pg.port}, database: app, user: authenticator,
           password: "{AUTHENTICATOR_PASSWORD}", service_user: rlsproxy_service,
           service_password: "{SERVICE_LOGIN_PASSWORD}"}}
jwt: {{secret: "{JWT_SECRET}"}}
audit: {{path: "{path.parent / "audit.jsonl"}"}}
{SERVICES if services else ""}
{extra}
"""
    )


def post_reload(proxy: RunningProxy) -> tuple[int, str]:
    assert proxy.proxy.http is not None
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.proxy.http.port}/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def reloadable(pg: Any, tmp_path: Path) -> Any:
    path = tmp_path / "rlsproxy.yaml"
    write_config(path, pg, services=True)
    running = RunningProxy(load_config(path), config_path=str(path))
    yield running, path
    running.stop()


def test_removed_service_loses_bypass_without_dropping_anyone(reloadable: Any, pg: Any) -> None:
    proxy, path = reloadable
    with (
        connect(proxy, token_for(ALICE)) as user,
        connect(proxy, service_token(), "job:nightly-sync") as job,
    ):
        write_config(path, pg, services=False)
        status, body = post_reload(proxy)
        assert (status, body) == (200, "reloaded\n")
        # established sessions carry on as they were
        assert user.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert job.execute("select current_user::text").fetchone() == ("service_role",)
        # the next service connection is refused: the identity is gone from the allowlist
        with pytest.raises(psycopg.OperationalError, match="matches no configured service"):
            connect(proxy, service_token(), "job:nightly-sync")
    assert (
        proxy.proxy.metrics.registry.get_sample_value("rlsproxy_config_reloads_total", {"outcome": "ok"}) == 1
    )


def test_invalid_config_is_rejected_and_the_old_one_stays(reloadable: Any, pg: Any) -> None:
    proxy, path = reloadable
    path.write_text("jwt: {algorithms: [none]}\nbogus_key: 1\n")
    status, body = post_reload(proxy)
    assert status == 500
    assert "reload rejected" in body and "bogus_key" in body
    with connect(proxy, service_token(), "job:nightly-sync") as job:  # old allowlist still in force
        assert job.execute("select current_user::text").fetchone() == ("service_role",)
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_config_reloads_total", {"outcome": "error"}) == 1


def test_connection_log_lines_follow_log_connections_on_reload(
    reloadable: Any, pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, path = reloadable
    caplog.set_level(logging.INFO, logger="rlsproxy.server")

    def lines(message: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "rlsproxy.server" and r.getMessage() == message]

    with connect(proxy, token_for(ALICE)) as conn:
        conn.execute("select 1")
    assert [getattr(r, "role", None) for r in lines("client connected")] == ["authenticated"]

    write_config(path, pg, services=True, extra="log: {connections: false}")
    assert post_reload(proxy) == (200, "reloaded\n")
    with connect(proxy, token_for(ALICE)) as conn:
        conn.execute("select 1")
    assert len(lines("client connected")) == 1  # no line for the session after the reload
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, "not-a-token")
    deadline = time.monotonic() + 5  # the proxy logs the refusal just after the client hears it
    while not lines("client refused") and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = lines("client refused")
    assert [getattr(r, "outcome", None) for r in refused] == ["auth_failed"]  # refusals are still logged


def test_restart_only_sections_are_kept(reloadable: Any, pg: Any) -> None:
    proxy, path = reloadable
    write_config(path, pg, services=True, extra="pool: {max_size: 3}")
    status, body = post_reload(proxy)
    assert status == 200 and "restart needed for: pool" in body
    assert proxy.proxy.config.pool.max_size != 3


def test_reload_under_load(reloadable: Any, pg: Any) -> None:
    """Clients keep querying (on open sessions and on new connections) while the config changes."""
    import threading

    proxy, path = reloadable
    stop = threading.Event()
    errors: list[Exception] = []
    done = [0, 0]

    def open_session() -> None:
        with connect(proxy, token_for(ALICE)) as conn:
            while not stop.is_set():
                try:
                    assert conn.execute("select count(*) from notes").fetchone() == (3,)
                    done[0] += 1
                except Exception as exc:
                    errors.append(exc)

    def new_connections() -> None:
        while not stop.is_set():
            try:
                with connect(proxy, token_for(ALICE)) as conn:
                    assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
                done[1] += 1
            except Exception as exc:
                errors.append(exc)

    workers = [threading.Thread(target=open_session), threading.Thread(target=new_connections)]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(6):
            write_config(path, pg, services=round_ % 2 == 1)
            assert post_reload(proxy)[0] == 200
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert errors == []
    assert done[0] > 0 and done[1] > 0
    # the last config has the service again: the new allowlist is in force
    with connect(proxy, service_token(), "job:nightly-sync") as job:
        assert job.execute("select current_user::text").fetchone() == ("service_role",)
