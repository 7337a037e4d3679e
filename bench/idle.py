"""Idle clients: N connections held open while 8 pgbench clients run select-only.

Reports the TPS of the active clients (the headline figure), how many idle clients got through
startup and what the others were told, and the resident memory the proxy/pooler grew by per held
connection (VmRSS before the idle clients connect and once all have settled).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.idle_clients import TOKEN_ENV
from bench.pgbench import run_pgbench
from bench.procstat import open_files_limit, rss_kib
from bench.result import RunResult
from bench.stack import RLSPROXY_TARGETS, Endpoint

ACTIVE_ARGS = ["-S", "-c", "8", "-j", "2", "-M", "simple"]
_SETTLE_TIMEOUT_S = 120  # every client settles within the proxy's startup + pool timeouts


def run_idle(pgbench: Path, endpoint: Endpoint, idle: int, duration_s: float) -> RunResult:
    if idle == 0:
        return run_pgbench(pgbench, endpoint, ACTIVE_ARGS, duration_s)
    pid = endpoint.middle_pid
    rss_before = rss_kib(pid) if pid else None
    holder = _start_holder(endpoint, idle)
    try:
        settled = _read_json_line(holder, _SETTLE_TIMEOUT_S)
        rss_after = rss_kib(pid) if pid else None
        result = run_pgbench(pgbench, endpoint, ACTIVE_ARGS, duration_s)
    finally:
        final = _stop_holder(holder)
    connected = int(settled.get("connected", 0))
    extra: dict[str, Any] = dict(result.extra)
    extra.update(settled)
    extra.update(final)
    extra["rss_before_kib"] = rss_before
    extra["rss_after_kib"] = rss_after
    if rss_before is not None and rss_after is not None:
        grown = rss_after - rss_before
        # Per held connection is the figure to quote; per attempt matters when most were refused.
        if connected:
            extra["rss_kib_per_idle_conn"] = round(grown / connected, 2)
        extra["rss_kib_per_attempt"] = round(grown / idle, 2)
    if pid:
        extra["middle_nofile_soft_hard"] = open_files_limit(pid)
    errors = list(result.errors)
    errors += [f"idle clients: {n}x {message}" for message, n in settled.get("failed", {}).items()]
    if final.get("dropped_while_idle"):
        errors.append(f"idle clients: {final['dropped_while_idle']} closed by the server while idle")
    return RunResult(result.value, result.work, errors, extra)


def _start_holder(endpoint: Endpoint, idle: int) -> subprocess.Popen[str]:
    env = dict(endpoint.env)
    if endpoint.target in RLSPROXY_TARGETS:
        env[TOKEN_ENV] = env["PGOPTIONS"].removeprefix("-c rlsproxy.jwt=")
    argv = [sys.executable, "-m", "bench.idle_clients", "--host", endpoint.host, "--port", str(endpoint.port)]
    argv += ["--user", endpoint.user, "--dbname", endpoint.dbname, "--count", str(idle)]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _read_json_line(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    # The holder prints one line once settled; if it hangs, the timer kills it, which ends readline().
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None else ""
        return {"connected": 0, "failed": {f"idle-client holder died: {err.strip()[-300:]}": 1}}
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def _stop_holder(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(input="", timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {}
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}
