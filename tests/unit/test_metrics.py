"""Metrics: every method moves its series, label values stay bounded, pool gauges read live values."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlsproxy.metrics import AUTH_FAILURE_REASONS, GUARD_RULES, MAX_LABEL_KINDS, Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def test_registries_are_separate() -> None:
    a, b = Metrics(), Metrics()
    a.figures.statements += 1
    assert value(a, "rlsproxy_statements_total") == 1
    assert value(b, "rlsproxy_statements_total") == 0


def test_render_has_no_created_series_and_a_content_type() -> None:
    text = Metrics().render().decode()
    assert "_created" not in text
    assert Metrics.CONTENT_TYPE.startswith("text/plain")


def test_client_connections() -> None:
    m = Metrics()
    m.figures.clients_active += 1
    m.figures.clients_active += 1
    m.figures.clients_active -= 1
    assert value(m, "rlsproxy_client_connections_active") == 1
    m.connection_outcome("ok")
    m.connection_outcome("auth_failed")
    m.connection_outcome("auth_failed")
    m.connection_outcome("something new")
    assert value(m, "rlsproxy_client_connections_total", outcome="ok") == 1
    assert value(m, "rlsproxy_client_connections_total", outcome="auth_failed") == 2
    assert value(m, "rlsproxy_client_connections_total", outcome="refused") == 0
    assert value(m, "rlsproxy_client_connections_total", outcome="error") == 1
    assert value(m, "rlsproxy_client_connections_total", outcome="something new") is None


def test_bytes() -> None:
    m = Metrics()
    m.figures.bytes_received += 100
    m.figures.bytes_received += 5
    m.figures.bytes_sent += 7
    assert value(m, "rlsproxy_client_bytes_received_total") == 105
    assert value(m, "rlsproxy_client_bytes_sent_total") == 7


def test_auth_failures_are_bounded() -> None:
    m = Metrics()
    m.auth_failed("expired")
    m.auth_failed("expired")
    m.auth_failed("bypass_no_label")
    m.auth_failed("user-42 sent garbage")
    assert value(m, "rlsproxy_auth_failures_total", reason="expired") == 2
    assert value(m, "rlsproxy_auth_failures_total", reason="bypass_no_label") == 1
    assert value(m, "rlsproxy_auth_failures_total", reason="other") == 1
    reasons = {dict(k[1])["reason"] for k in samples(m) if k[0] == "rlsproxy_auth_failures_total"}
    assert reasons == set(AUTH_FAILURE_REASONS)


def test_jwt() -> None:
    m = Metrics()
    m.jwt_verified(0.000004, cache_hit=True)
    m.jwt_verified(0.002, cache_hit=False)
    m.jwt_verified(0.003, cache_hit=False)
    assert value(m, "rlsproxy_jwt_cache_hits_total") == 1
    assert value(m, "rlsproxy_jwt_cache_misses_total") == 2
    assert value(m, "rlsproxy_jwt_verify_seconds_count") == 3
    assert value(m, "rlsproxy_jwt_verify_seconds_bucket", le="5e-06") == 1
    assert value(m, "rlsproxy_jwt_verify_seconds_bucket", le="0.0025") == 2
    assert value(m, "rlsproxy_jwt_verify_seconds_bucket", le="0.05") == 3


def test_transactions_and_statements() -> None:
    m = Metrics()
    m.figures.transactions_finished(1, 0.02)
    m.figures.statements += 1
    m.figures.statements += 3
    assert value(m, "rlsproxy_transactions_total") == 1
    assert value(m, "rlsproxy_transaction_duration_seconds_count") == 1
    assert value(m, "rlsproxy_transaction_duration_seconds_sum") == pytest.approx(0.02)
    assert value(m, "rlsproxy_statements_total") == 4


def test_guard_refusals_are_bounded() -> None:
    m = Metrics()
    m.refusal("set_role")
    m.refusal("DROP TABLE users")
    assert value(m, "rlsproxy_guard_refusals_total", rule="set_role") == 1
    assert value(m, "rlsproxy_guard_refusals_total", rule="other") == 1
    rules = {dict(k[1])["rule"] for k in samples(m) if k[0] == "rlsproxy_guard_refusals_total"}
    assert rules == set(GUARD_RULES)


def test_bypass() -> None:
    m = Metrics()
    m.bypass_started("etl", "job:nightly-sync")
    m.bypass_started("etl", "job:hourly")
    m.bypass_started("etl", "no colon")
    m.bypass_started("seeder", "Seed:Weird kind")  # not a lower-case word: other
    m.bypass_statement("etl", "job:nightly-sync", 5)
    m.bypass_refused("bypass_label_not_allowed")
    m.bypass_refused("made up")
    assert value(m, "rlsproxy_bypass_sessions_total", service="etl", label_kind="job") == 2
    assert value(m, "rlsproxy_bypass_sessions_total", service="etl", label_kind="other") == 1
    assert value(m, "rlsproxy_bypass_sessions_total", service="seeder", label_kind="other") == 1
    assert value(m, "rlsproxy_bypass_statements_total", service="etl", label_kind="job") == 5
    assert value(m, "rlsproxy_bypass_denied_total", reason="bypass_label_not_allowed") == 1
    assert value(m, "rlsproxy_bypass_denied_total", reason="other") == 1


def test_label_kinds_are_capped() -> None:
    m = Metrics()
    for i in range(MAX_LABEL_KINDS + 5):
        m.bypass_started("etl", f"kind{i}:x")
    kinds = {dict(k[1])["label_kind"] for k in samples(m) if k[0] == "rlsproxy_bypass_sessions_total"}
    assert len(kinds) == MAX_LABEL_KINDS + 1
    assert value(m, "rlsproxy_bypass_sessions_total", service="etl", label_kind="other") == 5
    assert m.label_kind("kind0:again") == "kind0"  # one already seen keeps its series


@dataclass
class FakePool:
    name: str
    size: int = 0
    idle_count: int = 0
    in_use_count: int = 0
    waiting: int = 0


def test_pool_collector_reads_live_values() -> None:
    m = Metrics()
    pool = FakePool("app", size=3, idle_count=1, in_use_count=2, waiting=0)
    m.register_pool(pool)
    assert value(m, "rlsproxy_pool_connections", pool="app", state="idle") == 1
    assert value(m, "rlsproxy_pool_connections", pool="app", state="in_use") == 2
    assert value(m, "rlsproxy_pool_size", pool="app") == 3
    assert value(m, "rlsproxy_pool_clients_waiting", pool="app") == 0
    pool.idle_count, pool.in_use_count, pool.size, pool.waiting = 0, 5, 5, 4  # no call into Metrics
    assert value(m, "rlsproxy_pool_connections", pool="app", state="in_use") == 5
    assert value(m, "rlsproxy_pool_clients_waiting", pool="app") == 4
    m.unregister_pool(pool)
    assert value(m, "rlsproxy_pool_size", pool="app") is None


def test_pools_sharing_a_name_are_summed() -> None:
    m = Metrics()
    m.register_pool(FakePool("app", size=2, in_use_count=2))
    m.register_pool(FakePool("app", size=1, idle_count=1))
    m.register_pool(FakePool("service", size=1, in_use_count=1))
    assert value(m, "rlsproxy_pool_size", pool="app") == 3
    assert value(m, "rlsproxy_pool_size", pool="service") == 1


def test_pool_histogram_and_errors() -> None:
    m = Metrics()
    m.pool_acquired("app", 0.0002)
    m.upstream_connect_error("app")
    assert value(m, "rlsproxy_pool_acquire_seconds_count", pool="app") == 1
    assert value(m, "rlsproxy_pool_acquire_seconds_bucket", pool="app", le="0.0005") == 1
    assert value(m, "rlsproxy_upstream_connect_errors_total", pool="app") == 1


def test_operations() -> None:
    m = Metrics()
    m.config_reloaded(True)
    m.config_reloaded(False)
    m.config_reloaded(False)
    m.audit_write_failed()
    assert value(m, "rlsproxy_config_reloads_total", outcome="ok") == 1
    assert value(m, "rlsproxy_config_reloads_total", outcome="error") == 2
    assert value(m, "rlsproxy_audit_write_failures_total") == 1
