"""Running pgbench against an endpoint and reading its report."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.result import RunResult
from bench.stack import Endpoint
from bench.stats import parse_pgbench, pgbench_errors

# pgbench's connection setup and an aborted client's wait (e.g. the proxy's 5 s pool timeout) add to
# -T; past this margin the run is stuck and is killed.
_TIMEOUT_MARGIN_S = 60


def run_pgbench(binary: Path, endpoint: Endpoint, args: list[str], duration_s: float) -> RunResult:
    """`pgbench -n -T duration <args>` against the endpoint.

    -n everywhere: pgbench would otherwise VACUUM first, which the proxy refuses (and the role
    `authenticated` may not do); scenarios that need it vacuum directly beforehand.
    """
    argv = [str(binary), "-n", "-T", str(max(1, round(duration_s))), *args, *endpoint.libpq_args()]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=endpoint.env,
            timeout=duration_s + _TIMEOUT_MARGIN_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(None, errors=[f"pgbench did not finish within {duration_s + _TIMEOUT_MARGIN_S} s"])
    report = parse_pgbench(proc.stdout)
    errors = pgbench_errors(proc.stderr)
    if proc.returncode != 0 and not errors:
        errors = [f"pgbench exited {proc.returncode}: {proc.stderr.strip()[-300:]}"]
    if report.failed:
        errors.append(f"{report.failed} failed transactions")
    extra = {"latency_ms": report.latency_ms, "exit_code": proc.returncode}
    # An aborted run still prints a tps figure over the clients that survived: keep it, flagged.
    return RunResult(report.tps, report.transactions, errors, extra)
