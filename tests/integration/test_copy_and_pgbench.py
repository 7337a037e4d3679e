"""COPY in both directions, under RLS, and pgbench's TPC-B through the proxy."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

import psycopg
import pytest

from rlsproxy.config import LimitsConfig
from rlsproxy.devcluster import ALICE, BOB
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy


def test_copy_to_stdout_sees_only_allowed_rows(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy("COPY (SELECT title FROM notes ORDER BY title) TO STDOUT") as copy:
            rows = [bytes(r).decode().strip() for r in copy]
        assert rows == ["alice public", "bob private", "bob public"]


def test_copy_from_stdin_and_rls_refusal(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        cur = conn.cursor()
        cur.execute("create temp table staged (user_id uuid, title text)")
        with cur.copy("COPY staged (user_id, title) FROM STDIN") as copy:
            copy.write_row((ALICE, "copied 1"))
            copy.write_row((ALICE, "copied 2"))
        assert conn.execute("select count(*) from staged").fetchone() == (2,)
        conn.commit()
        # Postgres refuses COPY FROM into a table with RLS for non-bypass roles: the error comes
        # through and the session goes on.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with cur.copy("COPY notes (user_id, title) FROM STDIN") as copy:
                copy.write_row((BOB, "forged"))
        conn.rollback()
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


def test_large_values_pass_through_whole_in_both_directions(proxy: RunningProxy) -> None:
    """Tens of megabytes in one message: a DataRow and a COPY row from the server, a Bind parameter
    and a COPY row from the client (large rows are passed on as they arrive, not held whole)."""
    size = 12_000_000
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        text = conn.execute("select repeat('ab', %s)", (size // 2,)).fetchone()[0]
        assert len(text) == size and text[:4] == "abab" and text[-2:] == "ab"
        value = os.urandom(size)
        row = conn.execute("select length(%s::bytea), md5(%s::bytea)", (value, value)).fetchone()
        assert row == (size, hashlib.md5(value).hexdigest())
        cur = conn.cursor()
        with cur.copy(f"COPY (SELECT repeat('c', {size})) TO STDOUT") as copy:
            rows = [bytes(r) for r in copy]
        assert len(rows) == 1 and len(rows[0]) == size + 1  # the row and its newline
        cur.execute("create temp table blob (b text)")
        with cur.copy("COPY blob (b) FROM STDIN") as copy:
            copy.write_row(("d" * size,))
        assert conn.execute("select length(b) from blob").fetchone() == (size,)
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)  # the session goes on


def test_values_larger_than_the_message_limit_pass_when_the_proxy_need_not_hold_them(make_proxy: Any) -> None:
    """limits.max_message_bytes bounds what the proxy holds whole (a statement text for the guard);
    a bind parameter or a COPY row larger than it is passed on as it arrives."""
    proxy = make_proxy(limits=LimitsConfig(startup_timeout_s=2.0, max_message_bytes=1024 * 1024))
    size = 3_000_000
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        value = os.urandom(size)
        assert conn.execute("select md5(%s::bytea)", (value,)).fetchone() == (hashlib.md5(value).hexdigest(),)
        cur = conn.cursor()
        cur.execute("create temp table blob (b text)")
        with cur.copy("COPY blob (b) FROM STDIN") as copy:
            copy.write_row(("d" * size,))
        assert conn.execute("select length(b) from blob").fetchone() == (size,)
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError, match="max_message_bytes"):
            conn.execute("select length('" + "t" * size + "')")  # a text the guard must read whole


def test_pgbench_tpcb_through_proxy(proxy: RunningProxy, pg: Any) -> None:
    """pgbench's TPC-B tables owned by the superuser, granted to `authenticated`, run via the proxy."""
    bench = str(pg.bindir / "pgbench")
    env = dict(os.environ, PGPASSWORD="")
    subprocess.run(
        [bench, "-i", "-s", "1", "-q", "-h", pg.host, "-p", str(pg.port), "-U", "postgres", "app"],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    pg.psql(
        "grant select, insert, update on pgbench_accounts, pgbench_branches, pgbench_tellers, "
        "pgbench_history to authenticated"
    )
    env["PGOPTIONS"] = f"-c rlsproxy.jwt={token_for(ALICE)}"
    out = subprocess.run(
        [bench, "-n", "-c", "4", "-t", "50", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app", "app"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 200/200" in out.stdout
    assert "number of failed transactions: 0" in out.stdout
