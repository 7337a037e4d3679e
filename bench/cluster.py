"""The throwaway PostgreSQL the benchmark runs against, loaded with pgbench's tables and the notes demo."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rlsproxy.devcluster import DevCluster

PGBENCH_SCALE = 10
PGBENCH_TABLES = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
# Rows the RLS workload inserts carry this title, so each run can start from the same table.
BENCH_NOTE_TITLE = "bench"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without libpq's PG* variables, which would silently redirect the clients."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env


def postmaster_pid(pg: DevCluster) -> int:
    """The running postmaster's pid (first line of postmaster.pid)."""
    return int((pg.datadir / "postmaster.pid").read_text().split("\n", 1)[0])


def start_cluster(max_connections: int) -> DevCluster:
    """Start a DevCluster with the demo schema and pgbench's tables; the caller destroys it."""
    pg = DevCluster()
    try:
        pg.start()
        ensure_max_connections(pg, max_connections)
        pg.install_demo()
        _init_pgbench(pg)
        pg.psql(
            # RLS is not enabled on pgbench's tables: the grants let the proxy's `authenticated`
            # role run pgbench's builtin scripts (TPC-B updates three tables and inserts history).
            f"GRANT SELECT, INSERT, UPDATE ON {PGBENCH_TABLES} TO authenticated;\n"
            # The RLS workload reads a user's latest notes; without this index each read would sort
            # every note the run has inserted so far, and later runs would be slower than earlier ones.
            "CREATE INDEX IF NOT EXISTS bench_notes_user_created ON notes (user_id, created_at DESC);\n"
        )
    except BaseException:
        pg.destroy()
        raise
    return pg


def ensure_max_connections(pg: DevCluster, needed: int) -> None:
    """Raise max_connections (ALTER SYSTEM + restart) when the pools and clients would not fit."""
    current = int(pg.psql("SHOW max_connections", dbname="postgres").strip())
    if current >= needed:
        return
    pg.psql(f"ALTER SYSTEM SET max_connections = {needed}", dbname="postgres")
    pg.stop()
    pg.start()


def _init_pgbench(pg: DevCluster) -> None:
    proc = subprocess.run(
        [str(pg.bindir / "pgbench"), "-i", "-q", "-s", str(PGBENCH_SCALE), *_superuser_args(pg)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -i failed:\n{proc.stderr}")


def _superuser_args(pg: DevCluster) -> list[str]:
    return ["-h", pg.host, "-p", str(pg.port), "-U", "postgres", "app"]


def reset_notes(pg: DevCluster) -> None:
    """Drop the rows earlier RLS runs inserted, so every run starts from the same table."""
    pg.psql(f"DELETE FROM notes WHERE title = '{BENCH_NOTE_TITLE}'; VACUUM ANALYZE notes;")


def reset_tpcb(pg: DevCluster) -> None:
    """What pgbench does before a run unless -n: we pass -n everywhere (the proxy refuses VACUUM)."""
    pg.psql("VACUUM pgbench_branches; VACUUM pgbench_tellers; TRUNCATE pgbench_history;")


def server_version(pg: DevCluster) -> str:
    return pg.psql("SHOW server_version", dbname="postgres").strip()


def pgbench_path(pg: DevCluster) -> Path:
    return pg.bindir / "pgbench"
