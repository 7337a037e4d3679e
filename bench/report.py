"""The printed table and the JSON file.

Each row is one variant against one target: median, min and max over rounds; ratios to direct
Postgres and to PgBouncer computed within each round and then the median taken (see
bench.stats.paired_ratio); and the proxy's or PgBouncer's CPU seconds per 1,000 transactions.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.result import Measurement
from bench.stack import ALL_TARGETS, DIRECT, PGB_SESSION, PGB_TX
from bench.stats import Summary, paired_ratio, summarize

_BASELINES = (DIRECT, PGB_SESSION, PGB_TX)


@dataclass
class Row:
    scenario: str
    variant: str
    target: str
    unit: str
    summary: Summary | None
    ratios: dict[str, float | None]  # baseline target -> median of per-round ratios
    cpu_s_per_1k: float | None
    runs_with_errors: int
    pg_cpu_s_per_1k: float | None = None
    user_cpu_s_per_1k: float | None = None


def build_rows(measurements: list[Measurement], rounds: int) -> list[Row]:
    groups: dict[tuple[str, str], dict[str, list[Measurement]]] = defaultdict(lambda: defaultdict(list))
    for m in measurements:
        groups[(m.scenario, m.variant)][m.target].append(m)
    rows = []
    for (scenario, variant), by_target in groups.items():
        per_round = {t: _by_round(ms, rounds) for t, ms in by_target.items()}
        for target in _ordered(by_target):
            ms = by_target[target]
            ratios = {
                b: paired_ratio(per_round[target], per_round[b])
                for b in _BASELINES
                if b in per_round and b != target
            }
            cpu = [m.cpu_s_per_1k for m in ms if m.cpu_s_per_1k is not None]
            pg_cpu = [m.pg_cpu_s_per_1k for m in ms if m.pg_cpu_s_per_1k is not None]
            user_cpu = [m.user_cpu_s_per_1k for m in ms if m.user_cpu_s_per_1k is not None]
            rows.append(
                Row(
                    scenario,
                    variant,
                    target,
                    ms[0].unit,
                    summarize(m.value for m in ms),
                    ratios,
                    statistics.median(cpu) if cpu else None,
                    sum(1 for m in ms if m.errors),
                    statistics.median(pg_cpu) if pg_cpu else None,
                    statistics.median(user_cpu) if user_cpu else None,
                )
            )
    return rows


def _by_round(ms: list[Measurement], rounds: int) -> list[float | None]:
    values: list[float | None] = [None] * max(rounds, 1 + max(m.round for m in ms))
    for m in ms:
        values[m.round] = m.value
    return values


def _ordered(by_target: dict[str, list[Measurement]]) -> list[str]:
    known = [t for t in ALL_TARGETS if t in by_target]
    return known + [t for t in by_target if t not in known]


# -- text -------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'scenario':<12} {'variant':<26} {'target':<13} {'median':>10} {'min':>10} {'max':>10} "
        f"{'unit':<6} {'/direct':>7} {'/pgb-s':>7} {'/pgb-tx':>7} "
        f"{'cpu s/1k':>8} {'usr s/1k':>8} {'pg s/1k':>8} {'err':>3}"
    )
    lines = [header, "-" * len(header)]
    previous: tuple[str, str] | None = None
    for r in rows:
        key = (r.scenario, r.variant)
        if previous is not None and key != previous and r.scenario != previous[0]:
            lines.append("")
        shown = (r.scenario, r.variant) if key != previous else ("", "")
        previous = key
        s = r.summary
        lines.append(
            f"{shown[0]:<12} {shown[1]:<26} {r.target:<13} "
            f"{_num(s.median if s else None):>10} {_num(s.min if s else None):>10} "
            f"{_num(s.max if s else None):>10} {r.unit:<6} "
            f"{_ratio(r.ratios.get(DIRECT)):>7} {_ratio(r.ratios.get(PGB_SESSION)):>7} "
            f"{_ratio(r.ratios.get(PGB_TX)):>7} "
            f"{_cpu(r.cpu_s_per_1k):>8} {_cpu(r.user_cpu_s_per_1k):>8} {_cpu(r.pg_cpu_s_per_1k):>8} "
            f"{r.runs_with_errors or '':>3}"
        )
    return "\n".join(lines)


def format_idle(measurements: list[Measurement]) -> str:
    """Per idle run: clients that got through startup, what the rest were told, memory per client."""
    lines = []
    for m in measurements:
        if m.scenario != "idle" or "connected" not in m.extra:
            continue
        x = m.extra
        failed = "; ".join(f"{n}x {msg}" for msg, n in x.get("failed", {}).items()) or "none"
        rss = f"RSS {x.get('rss_before_kib')} -> {x.get('rss_after_kib')} KiB"
        lines.append(
            f"  round {m.round + 1} {m.target:<9} {m.variant.split()[0]:>5} idle: "
            f"connected {x['connected']}, settled in {x.get('settle_s')} s, {rss} "
            f"({x.get('rss_kib_per_idle_conn', '-')} KiB/held conn, {x.get('rss_kib_per_attempt', '-')} "
            "KiB/attempt), "
            f"open files {x.get('middle_nofile_soft_hard')}; failed: {failed}"
        )
    return "\n".join(lines)


def format_errors(measurements: list[Measurement]) -> str:
    """Distinct error messages per target, with the runs they occurred in."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for m in measurements:
        for error in m.errors:
            seen[(m.target, error)].append(f"{m.scenario} {m.variant} r{m.round + 1}")
    lines = []
    for (target, error), where in sorted(seen.items()):
        lines.append(f"  [{target}] {error}\n      in {len(where)} run(s): {', '.join(where[:6])}")
    return "\n".join(lines)


# -- JSON -------------------------------------------------------------------------------------------


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)  # a half-written result never looks like a finished one


def _jsonable(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[call-overload]
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
