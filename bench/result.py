"""What one run and one measurement are: shared by the runners, the driver and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunResult:
    """A runner's outcome: the headline figure and how much work it counts (for CPU per 1k)."""

    value: float | None  # tps, connections/s, ... None when the run produced no figure
    work: int | None = None  # transactions (or connections) completed
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measurement:
    """One run of one variant against one target in one round, as stored in the JSON."""

    scenario: str
    variant: str
    target: str
    round: int
    unit: str
    value: float | None
    work: int | None
    cpu_s: float | None  # CPU seconds of the proxy/pooler process during the run
    cpu_s_per_1k: float | None
    wall_s: float
    errors: list[str]
    extra: dict[str, Any]
    # CPU seconds of Postgres (postmaster and backends) per 1,000: the database's side of each target
    pg_cpu_s_per_1k: float | None = None
    # The user-time part of cpu_s_per_1k (the rest is system time: the socket calls)
    user_cpu_s_per_1k: float | None = None
