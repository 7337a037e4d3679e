"""The benchmark's reference relays do what their figures claim: the bare relay copies bytes, the
context relay runs each pgbench -S transaction under the token's role and claims."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.bare_relay import RelayProcess
from bench.context_relay import ContextRelayProcess
from rlsproxy.devcluster import ALICE

CLAIMS = json.dumps({"sub": ALICE, "role": "authenticated"}, separators=(",", ":"))


@pytest.fixture(scope="module")
def pgbench_tables(pg: Any) -> str:
    bench = str(pg.bindir / "pgbench")
    subprocess.run(
        [bench, "-i", "-s", "1", "-q", "-h", pg.host, "-p", str(pg.port), "-U", "postgres", "app"],
        check=True,
        capture_output=True,
        env=dict(os.environ, PGPASSWORD=""),
        timeout=120,
    )
    pg.psql("grant select on pgbench_accounts, pgbench_branches to authenticated")
    return bench


def _at(port: int) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "app"]


def _psql(pg: Any, port: int, sql: str) -> str:
    out = subprocess.run(
        [str(pg.bindir / "psql"), "-X", "-At", "-c", sql, *_at(port)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PGPASSWORD=""),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_context_relay_runs_transactions_as_the_tokens_identity(pg: Any, tmp_path: Path) -> None:
    relay = ContextRelayProcess(pg.host, pg.port, "authenticated", CLAIMS, tmp_path)
    try:
        # psql's simple Query goes as extended messages behind the prefix; the prefix's replies are gone.
        got = _psql(pg, relay.port, "select current_user, current_setting('request.jwt.claims')")
        assert got == f"authenticated|{CLAIMS}"
        # Context is per transaction: a direct session as postgres is untouched.
        assert _psql(pg, pg.port, "select current_user") == "postgres"
    finally:
        relay.stop()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only_through_the_context_relay(
    pg: Any, pgbench_tables: str, tmp_path: Path, mode: str
) -> None:
    relay = ContextRelayProcess(pg.host, pg.port, "authenticated", CLAIMS, tmp_path)
    try:
        out = subprocess.run(
            [pgbench_tables, "-n", "-S", "-M", mode, "-c", "2", "-t", "40", *_at(relay.port)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PGPASSWORD=""),
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "number of transactions actually processed: 80/80" in out.stdout
    finally:
        relay.stop()


def test_bare_relay_copies_bytes(pg: Any, tmp_path: Path) -> None:
    relay = RelayProcess(pg.host, pg.port, tmp_path)
    try:
        assert _psql(pg, relay.port, "select current_user, 6 * 7") == "postgres|42"
    finally:
        relay.stop()
