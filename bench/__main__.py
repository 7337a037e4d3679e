"""`python -m bench` (or `make bench`): see bench/README.md."""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.cluster import server_version
from bench.driver import ProxyDied, run_micro_measurements, run_rounds, warm_up
from bench.machine import describe_machine
from bench.pgbouncer import find_pgbouncer, pgbouncer_version
from bench.procstat import open_files_limit
from bench.result import Measurement
from bench.scenarios import ALL_SCENARIOS, SCENARIOS
from bench.stack import running_stack

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_OPEN_FILES_WANTED = 65536  # the proxy inherits our limit: room for the idle-clients scenario


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="rlsproxy vs PostgreSQL vs PgBouncer")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every variant (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 3 s")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"scenarios to run, repeatable or comma-separated: {', '.join(ALL_SCENARIOS)} (default all)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in only if name not in ALL_SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ALL_SCENARIOS)}")
    args.scenarios = only or list(ALL_SCENARIOS)
    return args


def say(message: str) -> None:
    print(message, flush=True)


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, _OPEN_FILES_WANTED)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    raise_open_files_limit()
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    measurements: list[Measurement] = []
    payload: dict[str, Any] = {
        "started_utc": stamp,
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "scenarios": args.scenarios},
    }
    failure: str | None = None
    with running_stack(say) as stack:
        bouncer = find_pgbouncer()
        payload["machine"] = describe_machine(
            server_version(stack.pg), pgbouncer_version(bouncer) if bouncer else None
        )
        payload["rlsproxy_pid_open_files"] = open_files_limit(stack.proxy.pid)
        variants = [v for name in args.scenarios if name in SCENARIOS for v in SCENARIOS[name](stack)]
        try:
            if variants:
                say("warm-up")
                warm_up(stack, min(3.0, args.duration), say)
                # Appended one by one so a crash or Ctrl-C keeps every run measured before it.
                for m in run_rounds(stack, variants, args.rounds, args.duration, say):
                    measurements.append(m)
        except ProxyDied as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            failure = "interrupted"
        payload["rlsproxy_log_problems"] = [line for proxy in stack.proxies for line in proxy.problems()]
    if "micro" in args.scenarios and failure is None:
        measurements += list(run_micro_measurements(max(3, args.rounds * 2 - 1), say))
    wall = time.monotonic() - started
    rows = report.build_rows(measurements, args.rounds)
    payload.update(
        {
            "wall_s": round(wall, 1),
            "load_average_at_end": os.getloadavg(),  # other work on the machine skews the figures
            "failure": failure,
            "rows": rows,
            "measurements": measurements,
        }
    )
    path = args.results_dir / f"{stamp}.json"
    report.write_json(path, payload)
    _print_summary(rows, measurements, payload, failure)
    say(f"\nresults: {path}\nwall time: {wall / 60:.1f} min")
    return 1 if failure else 0


def _print_summary(
    rows: list[report.Row], measurements: list[Measurement], payload: dict[str, Any], failure: str | None
) -> None:
    say("\n" + report.format_table(rows))
    say(
        "\nmedian/min/max over rounds; /direct, /pgb-s, /pgb-tx: median of per-round ratios "
        "(value / baseline in the same round); cpu s/1k: CPU seconds of the rlsproxy or PgBouncer "
        "process per 1,000 transactions (connections for conn/s); usr s/1k: its user-time part (the "
        "rest is system time, the socket calls); pg s/1k: the same for PostgreSQL (postmaster and "
        "backends); err: runs with errors"
    )
    idle = report.format_idle(measurements)
    if idle:
        say("\nidle clients:\n" + idle)
    say(f"rlsproxy process open-file limit (soft/hard): {payload.get('rlsproxy_pid_open_files')}")
    start_load = payload.get("machine", {}).get("load_average_at_start")
    say(f"load average (1/5/15 min) at start {start_load}, at end {payload.get('load_average_at_end')}")
    errors = report.format_errors(measurements)
    say("\nerrors seen:\n" + (errors or "  none"))
    problems = payload.get("rlsproxy_log_problems") or []
    if problems:
        say("\nrlsproxy log, non-INFO lines (first 20):\n  " + "\n  ".join(problems))
    if failure:
        say(f"\nABORTED: {failure}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
