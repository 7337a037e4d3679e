"""The scenarios: each is a list of variants, each variant runs against several targets.

A variant's `run(stack, target, duration_s)` does one timed run and returns a RunResult; the
driver interleaves targets within a round, so targets of a variant are measured minutes apart at
most, and charges the CPU time of the proxy/pooler process to the run.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import cluster
from bench.churn import run_churn
from bench.idle import run_idle
from bench.large_values import run_large
from bench.pgbench import run_pgbench
from bench.result import RunResult
from bench.stack import (
    ALL_TARGETS,
    BARE_RELAY,
    CONTEXT_RELAY,
    DIRECT,
    PGB_SESSION,
    PGB_TX,
    RLSPROXY,
    RLSPROXY_TARGETS,
    Login,
    Stack,
)
from rlsproxy.devcluster import ALICE

Runner = Callable[[Stack, str, float], RunResult]


@dataclass(frozen=True)
class Variant:
    scenario: str
    name: str
    unit: str
    targets: tuple[str, ...]
    run: Runner


# -- pgbench-driven variants ------------------------------------------------------------------------


def pgbench_runner(
    args: list[str], login: Login = "plain", prepare: Callable[[Stack], None] | None = None
) -> Runner:
    def run(stack: Stack, target: str, duration_s: float) -> RunResult:
        if prepare is not None:
            prepare(stack)
        return run_pgbench(cluster.pgbench_path(stack.pg), stack.endpoint(target, login), args, duration_s)

    return run


def select_only(stack: Stack) -> list[Variant]:
    """pgbench -S at 8 and 32 clients in each query mode. PgBouncer 1.18 cannot keep prepared
    statements across transactions in transaction mode, so -M prepared skips pgb-tx. The bare
    relay shows what the Python runtime alone costs, the context relay what it and the RLS
    context cost together (Postgres doing rlsproxy's per-transaction work)."""
    variants = []
    for clients in (8, 32):
        for mode in ("simple", "extended", "prepared"):
            targets = ALL_TARGETS if mode != "prepared" else (DIRECT, PGB_SESSION, *RLSPROXY_TARGETS)
            targets = (*targets, BARE_RELAY, CONTEXT_RELAY)
            args = ["-S", "-c", str(clients), "-j", "2", "-M", mode]
            variants.append(
                Variant(
                    "select-only", f"c{clients} {mode}", "tps", stack.available(targets), pgbench_runner(args)
                )
            )
    return variants


def tpcb(stack: Stack) -> list[Variant]:
    args = ["-c", "8", "-j", "2", "-M", "simple"]
    runner = pgbench_runner(args, prepare=lambda s: cluster.reset_tpcb(s.pg))
    return [Variant("tpcb", "c8 simple", "tps", stack.available((*ALL_TARGETS, BARE_RELAY)), runner)]


def rls(stack: Stack) -> list[Variant]:
    """Read own notes, insert own note, in one transaction as Alice.

    Through rlsproxy the script holds only the application's statements: the proxy sets role and
    claims in front of the transaction. Direct and through PgBouncer (transaction mode) the script
    does it itself, PostgREST-style, logged in as the authenticator.
    """
    proxy_script, postgrest_script = _write_rls_scripts(stack.workdir)
    args = ["-c", "8", "-j", "2", "-M", "extended"]

    def run(s: Stack, target: str, duration_s: float) -> RunResult:
        cluster.reset_notes(s.pg)
        script = proxy_script if target in RLSPROXY_TARGETS else postgrest_script
        endpoint = s.endpoint(target, "rls")
        return run_pgbench(cluster.pgbench_path(s.pg), endpoint, [*args, "-f", str(script)], duration_s)

    targets = stack.available((DIRECT, PGB_TX, *RLSPROXY_TARGETS))
    return [Variant("rls-notes", "c8 extended", "tps", targets, run)]


def _write_rls_scripts(workdir: Path) -> tuple[Path, Path]:
    claims = json.dumps({"sub": ALICE, "role": "authenticated"})
    work = [
        f"SELECT id, title FROM notes WHERE user_id = '{ALICE}' ORDER BY created_at DESC LIMIT 10;",
        f"INSERT INTO notes (user_id, title, content) VALUES ('{ALICE}', '{cluster.BENCH_NOTE_TITLE}', 'x');",
    ]
    set_identity = (
        "SELECT set_config('role', 'authenticated', true), "
        f"set_config('request.jwt.claims', '{claims}', true);"
    )
    proxy_script = workdir / "rls_proxy.sql"
    postgrest_script = workdir / "rls_postgrest.sql"
    proxy_script.write_text("\n".join(["BEGIN;", *work, "COMMIT;"]) + "\n")
    postgrest_script.write_text("\n".join(["BEGIN;", set_identity, *work, "COMMIT;"]) + "\n")
    return proxy_script, postgrest_script


def churn(stack: Stack) -> list[Variant]:
    """A new connection per transaction: pgbench -C (one token for all), and a Python loader with
    a fresh token per connection (direct and PgBouncer need none; they show the floor)."""
    pgbench_c = pgbench_runner(["-C", "-S", "-c", "8", "-j", "2", "-M", "simple"])

    def loader(s: Stack, target: str, duration_s: float) -> RunResult:
        return run_churn(s.endpoint(target), duration_s)

    return [
        Variant("churn", "pgbench -C -S c8", "tps", stack.available(ALL_TARGETS), pgbench_c),
        Variant(
            "churn",
            "asyncpg fresh token",
            "conn/s",
            stack.available((DIRECT, PGB_SESSION, *RLSPROXY_TARGETS)),
            loader,
        ),
    ]


def large(stack: Stack) -> list[Variant]:
    """32 MB values read and written on one connection (bench/large_values.py)."""
    targets = stack.available((DIRECT, PGB_SESSION, RLSPROXY, BARE_RELAY))
    variants = []
    for direction in ("read", "write"):

        def run(s: Stack, target: str, duration_s: float, way: str = direction) -> RunResult:
            return run_large(s.endpoint(target), duration_s, way)

        variants.append(Variant("large", f"32 MB value {direction}", "MB/s", targets, run))
    return variants


IDLE_COUNTS = (0, 1000, 5000)
_FDS_PER_IDLE_RUN_MARGIN = 200


def idle(stack: Stack) -> list[Variant]:
    """Idle clients held open while 8 clients run select-only. PgBouncer in transaction mode is
    the reference: it holds idle clients without server connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    variants = []
    for count in IDLE_COUNTS:
        # The holder raises its own soft limit up to the hard one; the proxy inherits our soft limit.
        if count + _FDS_PER_IDLE_RUN_MARGIN > min(soft, hard):
            print(f"skipping {count} idle clients: open-file limit is {soft}/{hard}", flush=True)
            continue

        def run(s: Stack, target: str, duration_s: float, n: int = count) -> RunResult:
            return run_idle(cluster.pgbench_path(s.pg), s.endpoint(target), n, duration_s)

        variants.append(
            Variant("idle", f"{count} idle + 8 active -S", "tps", stack.available((PGB_TX, RLSPROXY)), run)
        )
    return variants


SCENARIOS: dict[str, Callable[[Stack], list[Variant]]] = {
    "select": select_only,
    "tpcb": tpcb,
    "rls": rls,
    "churn": churn,
    "idle": idle,
    "large": large,
}
# "micro" is in-process and runs after the others (see bench.__main__).
ALL_SCENARIOS = (*SCENARIOS, "micro")
