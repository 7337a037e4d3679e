"""The figures that change per transaction or per connection: plain numbers, no lock, no I/O.

They are updated on the hot path (rlsproxy.server, compiled with the session machines, so an update
is a field write rather than an interpreted call) and read by rlsproxy.metrics at scrape time,
which turns them into Prometheus metric families. The proxy runs on one event loop thread, so
plain ints do; prometheus_client's inc and observe take a lock each.
"""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Bucket counts and a sum: observe() is a bisect and two additions."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Figures:
    """Counters, gauges and histograms of the client side (metrics.py names and documents them)."""

    def __init__(
        self,
        outcomes: tuple[str, ...],
        transaction_buckets: tuple[float, ...],
        jwt_buckets: tuple[float, ...],
    ) -> None:
        self.statements = 0
        self.transactions = 0
        self.durations = Histogram(transaction_buckets)
        self.clients_active = 0
        self.outcomes = dict.fromkeys(outcomes, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        self.jwt_seconds = Histogram(jwt_buckets)
        self.jwt_cache_hits = 0
        self.jwt_cache_misses = 0
        self.acquire_seconds: dict[str, Histogram] = {}  # by pool, from its first acquisition

    def transactions_finished(self, count: int, seconds: float) -> None:
        """`count` transactions pipelined together ended after `seconds`: one duration sample for the run."""
        self.transactions += count
        self.durations.observe(seconds)
