"""/metrics, /healthz and /readyz of a running proxy: counters move with real traffic."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlsproxy.config import PoolConfig
from rlsproxy.devcluster import ALICE, BOB
from tests.integration.conftest import token_for
from tests.integration.test_bypass_audit import bypass_config, connect, service_token
from tests.support.proxy import RunningProxy, base_config


def get(proxy: RunningProxy, path: str) -> tuple[int, str]:
    assert proxy.proxy.http is not None
    url = f"http://127.0.0.1:{proxy.proxy.http.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One /metrics scrape, parsed by prometheus-client's own parser."""

    def __init__(self, proxy: RunningProxy) -> None:
        status, text = get(proxy, "/metrics")
        assert status == 200
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after(name, **labels) - before(name, **labels)


def test_counters_move_with_traffic(make_proxy: Any, pg: Any, tmp_path: Path) -> None:
    proxy = make_proxy(bypass_config(pg, tmp_path / "audit.jsonl"))
    before = Scrape(proxy)
    token = token_for(ALICE)
    with psycopg.connect(proxy.dsn(token=token), autocommit=True) as conn:
        conn.execute("select count(*) from notes").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set role postgres")
        with conn.transaction():
            conn.execute("select 1")
            conn.execute("select 2")
        during = Scrape(proxy)
        assert (
            during("rlsproxy_client_connections_active") == before("rlsproxy_client_connections_active") + 1
        )
        assert during("rlsproxy_pool_connections", pool="users", state="in_use") >= 1
    with psycopg.connect(proxy.dsn(token=token), autocommit=True) as conn:  # same token: cache hit
        conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(token=token_for(BOB, ttl_s=-3600)))
    with connect(proxy, service_token(), "job:nightly-sync") as conn:
        conn.execute("select count(*) from notes")
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, service_token(), None)
    time.sleep(0.2)  # disconnects are processed after the client returns
    after = Scrape(proxy)

    assert delta(before, after, "rlsproxy_client_connections_total", outcome="ok") == 3
    assert delta(before, after, "rlsproxy_client_connections_total", outcome="auth_failed") == 2
    assert delta(before, after, "rlsproxy_auth_failures_total", reason="expired") == 1
    assert delta(before, after, "rlsproxy_auth_failures_total", reason="bypass_no_label") == 1
    assert after("rlsproxy_client_connections_active") == before("rlsproxy_client_connections_active")
    assert delta(before, after, "rlsproxy_jwt_cache_hits_total") >= 1
    assert delta(before, after, "rlsproxy_jwt_cache_misses_total") >= 3
    assert delta(before, after, "rlsproxy_jwt_verify_seconds_count") == 5
    assert delta(before, after, "rlsproxy_guard_refusals_total", rule="set_role") == 1
    assert delta(before, after, "rlsproxy_statements_total") >= 5
    assert delta(before, after, "rlsproxy_transactions_total") >= 4
    assert delta(before, after, "rlsproxy_transaction_duration_seconds_count") >= 3
    assert (
        delta(before, after, "rlsproxy_bypass_sessions_total", service="nightly-sync", label_kind="job") == 1
    )
    assert (
        delta(before, after, "rlsproxy_bypass_statements_total", service="nightly-sync", label_kind="job")
        == 1
    )
    assert delta(before, after, "rlsproxy_bypass_denied_total", reason="bypass_no_label") == 1
    assert delta(before, after, "rlsproxy_pool_acquire_seconds_count", pool="users") == 2
    assert delta(before, after, "rlsproxy_pool_acquire_seconds_count", pool="service") == 1
    assert after("rlsproxy_pool_size", pool="users") >= 1
    assert after("rlsproxy_pool_connections", pool="users", state="idle") >= 1
    assert after("rlsproxy_pool_size", pool="service") == 1
    assert delta(before, after, "rlsproxy_client_bytes_received_total") > 0
    assert delta(before, after, "rlsproxy_client_bytes_sent_total") > 0


def test_no_per_user_labels(make_proxy: Any, pg: Any) -> None:
    proxy = make_proxy()
    for sub in (ALICE, BOB):
        with psycopg.connect(proxy.dsn(token=token_for(sub)), autocommit=True) as conn:
            conn.execute("select 1")
    _, text = get(proxy, "/metrics")
    assert ALICE not in text and BOB not in text
    assert "rlsproxy_client_connections_total" in text


def test_upstream_connect_errors_and_pool_timeout(make_proxy: Any, pg: Any) -> None:
    dead = make_proxy(upstream=replace(base_config(pg).upstream, port=1))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dead.dsn(token=token_for(ALICE)))
    scrape = Scrape(dead)
    assert scrape("rlsproxy_upstream_connect_errors_total", pool="users") == 1
    assert scrape("rlsproxy_client_connections_total", outcome="error") == 1
    busy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=200))
    with psycopg.connect(busy.dsn(token=token_for(ALICE))) as alice:
        alice.execute("select 1")
        bob = psycopg.connect(busy.dsn(token=token_for(BOB)))  # greeted; the server comes with the query
        with pytest.raises(psycopg.OperationalError, match="no upstream connection available"):
            bob.execute("select 1")
        bob.close()
        scrape = Scrape(busy)
        assert scrape("rlsproxy_client_connections_total", outcome="ok") == 2
        assert scrape("rlsproxy_pool_acquire_seconds_count", pool="users") == 1  # only the one that got it


def test_health_and_readiness_follow_upstream(make_proxy: Any, pg: Any) -> None:
    proxy = make_proxy()
    assert get(proxy, "/healthz") == (200, "ok\n")
    assert get(proxy, "/readyz") == (200, "ok\n")
    pg.stop()
    try:
        status, body = get(proxy, "/readyz")
        assert status == 503
        assert body.startswith("not ready: upstream unavailable")
        assert get(proxy, "/healthz")[0] == 200  # alive, just not ready
    finally:
        pg.start()
    assert get(proxy, "/readyz") == (200, "ok\n")


def test_port_probe_is_not_a_failed_client(make_proxy: Any, pg: Any) -> None:
    import socket

    proxy = make_proxy()
    socket.create_connection(("127.0.0.1", proxy.port)).close()  # what a TCP health check does
    with socket.create_connection(("127.0.0.1", proxy.port)) as half:
        half.sendall(b"\x00\x00")  # a client that gives up mid-startup is one
    time.sleep(0.3)
    scrape = Scrape(proxy)
    assert scrape("rlsproxy_client_connections_total", outcome="error") == 1
    assert scrape("rlsproxy_client_connections_active") == 0
