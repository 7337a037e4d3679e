"""Pure helpers: reading pgbench's report and summarising rounds.

No I/O and no clock here, so everything in this module is unit-tested (tests/unit/test_bench_stats.py).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# pgbench 14+ prints "(without initial connection time)" and, with -C, "(including reconnection
# times)"; older versions said "excluding/including connections establishing". Only the number counts.
_TPS = re.compile(r"^tps = ([0-9]+(?:\.[0-9]+)?) \(", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: ([0-9]+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: ([0-9]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9]+(?:\.[0-9]+)?) ms", re.MULTILINE)
# "pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  permission denied ..."
_CLIENT_ERROR = re.compile(r"^pgbench: error: (?:client \d+ (?:script \d+ )?aborted[^:]*: )?(.*)$")


@dataclass(frozen=True)
class PgbenchReport:
    """The figures of one pgbench run; None where the report lacks the line (e.g. an aborted run)."""

    tps: float | None
    transactions: int | None
    failed: int | None
    latency_ms: float | None


def parse_pgbench(stdout: str) -> PgbenchReport:
    """Read the summary pgbench prints at the end of a run."""
    return PgbenchReport(
        tps=_first_float(_TPS, stdout),
        transactions=_first_int(_PROCESSED, stdout),
        failed=_first_int(_FAILED, stdout),
        latency_ms=_first_float(_LATENCY, stdout),
    )


def pgbench_errors(stderr: str) -> list[str]:
    """Distinct error messages from pgbench's stderr, client numbers stripped so repeats collapse."""
    seen: dict[str, None] = {}
    for line in stderr.splitlines():
        match = _CLIENT_ERROR.match(line.strip())
        if match is not None:
            message = " ".join(match.group(1).split())
            seen.setdefault(message, None)
    return list(seen)


def _first_float(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


def _first_int(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float
    n: int


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Median, min and max of the values that exist; None when no round produced one."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Summary(statistics.median(present), min(present), max(present), len(present))


def paired_ratio(values: Sequence[float | None], baselines: Sequence[float | None]) -> float | None:
    """Median over rounds of value/baseline, pairing each value with the baseline of its own round.

    Pairing within a round cancels slow drift of the machine (other load, thermal state) that a
    ratio of two medians taken at different times would keep. Rounds missing either side, or with a
    zero baseline, are left out; None when no round pairs up.
    """
    ratios = [
        v / b for v, b in zip(values, baselines, strict=False) if v is not None and b is not None and b != 0
    ]
    return statistics.median(ratios) if ratios else None


def per_thousand(amount: float, units: int | None) -> float | None:
    """`amount` per 1,000 units (e.g. CPU seconds per 1,000 transactions); None without units."""
    if not units:
        return None
    return amount * 1000.0 / units
