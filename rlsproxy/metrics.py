"""Prometheus metrics for the proxy; the only module that imports prometheus_client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_label

from rlsproxy.figures import Figures, Histogram

# Every label value below comes from one of these sets (or from config: service and pool names), so the
# number of series stays bounded whatever clients send. Anything else is counted as OTHER.
OTHER: Final = "other"

CONNECTION_OUTCOMES: Final = ("ok", "auth_failed", "refused", "error")
RELOAD_OUTCOMES: Final = ("ok", "error")
JWKS_OUTCOMES: Final = ("ok", "error")

# Why a token was refused (rlsproxy.auth: AuthError.reason).
_TOKEN_REASONS: Final = (
    "no_token",
    "malformed",
    "algorithm",
    "bad_signature",
    "unknown_kid",
    "jwks_not_loaded",
    "cleartext_password",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "missing_claim",
    "role_missing",
    "role_invalid",
)

# Why an attempt to bypass RLS was refused (rlsproxy.auth.identity.BypassDenied, plus the edge's own
# refusal when the audit log cannot be written: bypass fails closed).
BYPASS_DENIED_REASONS: Final = (
    "role_not_allowed",
    "bypass_not_a_service",
    "bypass_role_not_allowed",
    "bypass_no_label",
    "bypass_label_not_allowed",
    "bypass_audit_unavailable",
    OTHER,
)
AUTH_FAILURE_REASONS: Final = _TOKEN_REASONS + BYPASS_DENIED_REASONS

# The guard's rule names (rlsproxy.session.guard), plus the few it uses that the issue did not list.
GUARD_RULES: Final = (
    "set_role",
    "session_authorization",
    "protected_setting",
    "protected_set_config",
    "set_config",
    "dynamic_set_config",
    "dynamic_sql_function",
    "plpgsql_dynamic_execute",
    "unanalysable_body",
    "reserved_name",
    "needs_no_transaction",
    "syntax",
    "too_complex",
    "discard_all_in_batch",
    "deallocate_all_in_batch",
    "function_call",
    "statement_after_transaction_end",
    "in_band_in_batch",
    "in_band_disabled",
    "in_band_token",
    "in_band_unsupported",
    "copy_not_last",
    OTHER,
)

# Label kinds ("job" in "job:nightly-sync") are chosen by clients within the configured globs, which
# may be as loose as "*"; so a kind must look like a word and only the first few distinct ones get
# their own series.
MAX_LABEL_KINDS: Final = 16
_LABEL_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# Cached verifications take microseconds, a cold RSA/EC verify a millisecond or so; 50ms is pathological.
JWT_BUCKETS: Final = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2)
TRANSACTION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ACQUIRE_BUCKETS: Final = (1e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PoolStats(Protocol):
    """What the pool collector reads at scrape time (rlsproxy.pool.Pool has all of it)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def idle_count(self) -> int: ...
    @property
    def in_use_count(self) -> int: ...
    @property
    def waiting(self) -> int: ...


def _bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


class _PoolCollector(Collector):
    """Reads live figures from the registered pools at scrape time: nothing to update on the hot path."""

    def __init__(self) -> None:
        self._pools: list[PoolStats] = []

    def add(self, pool: PoolStats) -> None:
        if not any(p is pool for p in self._pools):
            self._pools.append(pool)

    def remove(self, pool: PoolStats) -> None:
        self._pools = [p for p in self._pools if p is not pool]

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check names at registration without touching any pool.
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        # During a config reload an old and a new pool may share a name; their figures are summed so
        # the exposition never holds the same series twice.
        totals: dict[str, list[int]] = {}
        for pool in list(self._pools):
            t = totals.setdefault(pool.name, [0, 0, 0, 0])
            t[0] += pool.idle_count
            t[1] += pool.in_use_count
            t[2] += pool.size
            t[3] += pool.waiting
        connections, size, waiting = self._families()
        for name, (idle, in_use, total, waiters) in totals.items():
            connections.add_metric([name, "idle"], idle)
            connections.add_metric([name, "in_use"], in_use)
            size.add_metric([name], total)
            waiting.add_metric([name], waiters)
        return iter((connections, size, waiting))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "rlsproxy_pool_connections", "Upstream connections by state.", labels=["pool", "state"]
            ),
            GaugeMetricFamily(
                "rlsproxy_pool_size", "Upstream connections open or being opened.", labels=["pool"]
            ),
            GaugeMetricFamily(
                "rlsproxy_pool_clients_waiting",
                "Clients waiting for an upstream connection.",
                labels=["pool"],
            ),
        )


# How prometheus_client writes a bucket bound ("0.005", "1.0", "+Inf"); the library leaves it untyped.
_float_label = cast(Callable[[float], str], _untyped_float_label)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    cumulative, buckets = 0, []
    for bound, n in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        cumulative += n
        buckets.append((_float_label(bound), cumulative))
    family.add_metric(labels, buckets, histogram.sum)


class _FiguresCollector(Collector):
    """Turns the plain figures (rlsproxy.figures) into metric families at scrape time.

    prometheus_client's inc and observe take a lock each: about 1.3 µs per transaction for the
    relay's three, and a dozen such calls per client connection.
    """

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        yield CounterMetricFamily("rlsproxy_transactions", "Transactions completed.", value=f.transactions)
        yield CounterMetricFamily("rlsproxy_statements", "Statements relayed.", value=f.statements)
        yield self._histogram(
            "rlsproxy_transaction_duration_seconds",
            "Transaction duration, first statement to commit or rollback.",
            f.durations,
        )
        # The gauge cannot be called rlsproxy_client_connections: that is the counter's family name.
        yield GaugeMetricFamily(
            "rlsproxy_client_connections_active", "Client connections now open.", value=f.clients_active
        )
        outcomes = CounterMetricFamily(
            "rlsproxy_client_connections",
            "Client connections by how their startup ended.",
            labels=["outcome"],
        )
        for outcome, count in f.outcomes.items():
            outcomes.add_metric([outcome], count)
        yield outcomes
        yield CounterMetricFamily(
            "rlsproxy_client_bytes_received", "Bytes read from clients.", value=f.bytes_received
        )
        yield CounterMetricFamily("rlsproxy_client_bytes_sent", "Bytes sent to clients.", value=f.bytes_sent)
        yield self._histogram("rlsproxy_jwt_verify_seconds", "Time to verify a token.", f.jwt_seconds)
        yield CounterMetricFamily(
            "rlsproxy_jwt_cache_hits", "Tokens found in the verification cache.", value=f.jwt_cache_hits
        )
        yield CounterMetricFamily(
            "rlsproxy_jwt_cache_misses", "Tokens verified from scratch.", value=f.jwt_cache_misses
        )
        acquire = HistogramMetricFamily(
            "rlsproxy_pool_acquire_seconds",
            "Time a client waited for an upstream connection.",
            labels=["pool"],
        )
        for pool, histogram in f.acquire_seconds.items():
            _add_histogram(acquire, [pool], histogram)
        yield acquire

    @staticmethod
    def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=[])
        _add_histogram(family, [], histogram)
        return family


class _WithoutCreated(Collector):
    """The registry minus the *_created samples, which double the series and nothing here reads them.

    (prometheus_client can only turn them off process-wide; this keeps the choice local.)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if metric.type not in ("counter", "histogram", "summary", "gaugehistogram"):
                yield metric
                continue
            # A copy: a collector may hand out the same Metric object on every scrape.
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield copy


class Metrics:
    """All proxy metrics in a registry of their own, so tests (and several proxies) do not collide."""

    CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._exposed = _WithoutCreated(r)
        self.auth_failures = Counter(
            "rlsproxy_auth_failures_total", "Refused authentications by reason.", ["reason"], registry=r
        )
        # Per transaction and per connection: plain numbers, no lock per update.
        self.figures = Figures(CONNECTION_OUTCOMES, TRANSACTION_BUCKETS, JWT_BUCKETS)
        r.register(_FiguresCollector(self.figures))
        self.guard_refusals = Counter(
            "rlsproxy_guard_refusals_total", "Statements refused by the guard, by rule.", ["rule"], registry=r
        )
        self.in_band_switches = Counter(
            "rlsproxy_in_band_switches_total",
            "In-band identity switches (rlsproxy.jwt), by outcome: ok or the refusal reason.",
            ["outcome"],
            registry=r,
        )
        self.bypass_sessions = Counter(
            "rlsproxy_bypass_sessions_total",
            "Service sessions that bypass RLS.",
            ["service", "label_kind"],
            registry=r,
        )
        self.bypass_statements = Counter(
            "rlsproxy_bypass_statements_total",
            "Statements run in RLS-bypassing service sessions.",
            ["service", "label_kind"],
            registry=r,
        )
        self.bypass_denied = Counter(
            "rlsproxy_bypass_denied_total",
            "Refused attempts to bypass RLS, by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_connect_errors = Counter(
            "rlsproxy_upstream_connect_errors_total", "Failed upstream logins.", ["pool"], registry=r
        )
        self.config_reloads = Counter(
            "rlsproxy_config_reloads_total", "Configuration reloads by outcome.", ["outcome"], registry=r
        )
        self.audit_write_failures = Counter(
            "rlsproxy_audit_write_failures_total", "Audit lines that could not be written.", registry=r
        )
        self.jwks_refreshes = Counter(
            "rlsproxy_jwks_refresh_total", "Fetches of jwt.jwks_url by outcome.", ["outcome"], registry=r
        )
        self.jwks_keys = Gauge(
            "rlsproxy_jwks_keys", "Keys in the last good set from jwt.jwks_url.", registry=r
        )
        self._pools = _PoolCollector()
        r.register(self._pools)
        self._label_kinds: set[str] = set()
        # Series for every known label value exist from the start, so rate() and alerts see a zero
        # rather than nothing until the first event.
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        for outcome in ("ok", *AUTH_FAILURE_REASONS):
            self.in_band_switches.labels(outcome)
        for reason in BYPASS_DENIED_REASONS:
            self.bypass_denied.labels(reason)
        for rule in GUARD_RULES:
            self.guard_refusals.labels(rule)
        for outcome in RELOAD_OUTCOMES:
            self.config_reloads.labels(outcome)
        for outcome in JWKS_OUTCOMES:
            self.jwks_refreshes.labels(outcome)

    # client connections ------------------------------------------------------------------------
    def connection_outcome(self, outcome: str) -> None:
        """How a connection's startup ended: ok | auth_failed | refused | error (anything else: error)."""
        self.figures.outcomes[outcome if outcome in CONNECTION_OUTCOMES else "error"] += 1

    # authentication ----------------------------------------------------------------------------
    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(_bounded(reason, AUTH_FAILURE_REASONS)).inc()

    def jwt_verified(self, seconds: float, *, cache_hit: bool) -> None:
        """One token check: its duration and whether the verification cache answered it."""
        figures = self.figures
        figures.jwt_seconds.observe(seconds)
        if cache_hit:
            figures.jwt_cache_hits += 1
        else:
            figures.jwt_cache_misses += 1

    def in_band_switch(self, outcome: str) -> None:
        self.in_band_switches.labels(
            outcome if outcome == "ok" else _bounded(outcome, AUTH_FAILURE_REASONS)
        ).inc()

    # transactions and the guard ----------------------------------------------------------------
    def refusal(self, rule: str) -> None:
        self.guard_refusals.labels(_bounded(rule, GUARD_RULES)).inc()

    # RLS bypass --------------------------------------------------------------------------------
    def label_kind(self, label: str | None) -> str:
        """The bounded kind of a bypass label: "job" for "job:nightly-sync", else "other"."""
        if label is None or ":" not in label:
            return OTHER
        kind = label.split(":", 1)[0]
        if not _LABEL_KIND.fullmatch(kind) or kind == OTHER:
            return OTHER
        if kind not in self._label_kinds:
            if len(self._label_kinds) >= MAX_LABEL_KINDS:
                return OTHER
            self._label_kinds.add(kind)
        return kind

    def bypass_started(self, service: str, label: str | None) -> None:
        self.bypass_sessions.labels(service, self.label_kind(label)).inc()

    def bypass_statement(self, service: str, label: str | None, n: int = 1) -> None:
        self.bypass_statements.labels(service, self.label_kind(label)).inc(n)

    def bypass_refused(self, reason: str) -> None:
        self.bypass_denied.labels(_bounded(reason, BYPASS_DENIED_REASONS)).inc()

    # pools -------------------------------------------------------------------------------------
    def register_pool(self, pool: PoolStats) -> None:
        """Report this pool's live figures at every scrape until unregister_pool()."""
        self._pools.add(pool)

    def unregister_pool(self, pool: PoolStats) -> None:
        self._pools.remove(pool)

    def pool_acquired(self, pool: str, seconds: float) -> None:
        histogram = self.figures.acquire_seconds.get(pool)
        if histogram is None:
            histogram = self.figures.acquire_seconds[pool] = Histogram(ACQUIRE_BUCKETS)
        histogram.observe(seconds)

    def upstream_connect_error(self, pool: str) -> None:
        self.upstream_connect_errors.labels(pool).inc()

    # operations --------------------------------------------------------------------------------
    def config_reloaded(self, ok: bool) -> None:
        self.config_reloads.labels("ok" if ok else "error").inc()

    def audit_write_failed(self) -> None:
        self.audit_write_failures.inc()

    def jwks_refreshed(self, ok: bool, keys: int) -> None:
        """One fetch of jwt.jwks_url; `keys` is the size of the set in use afterwards."""
        self.jwks_refreshes.labels("ok" if ok else "error").inc()
        self.jwks_keys.set(keys)

    def render(self) -> bytes:
        """The text exposition of this registry (serve with CONTENT_TYPE)."""
        return generate_latest(self._exposed)
