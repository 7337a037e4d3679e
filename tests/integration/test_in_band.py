"""In-band identity: apps with their own pool switch the identity per transaction with a token."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor
from psycopg_pool import ConnectionPool

from rlsproxy.devcluster import ALICE, BOB
from tests.integration.conftest import token_for
from tests.integration.test_bypass_audit import service_token
from tests.support.proxy import RunningProxy, base_config

WHO = "select coalesce(auth.uid()::text, 'anon'), current_user::text, count(*) from notes"
ALICE_VIEW = (ALICE, "authenticated", 3)
BOB_VIEW = (BOB, "authenticated", 3)
ANON_VIEW = ("anon", "anon", 2)


def anonymous(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    """A connection whose startup identity is anonymous (an empty token)."""
    return psycopg.connect(proxy.dsn(token=""), **kw)


def test_set_local_lasts_for_the_transaction_simple_protocol(proxy: RunningProxy) -> None:
    with anonymous(proxy) as conn:
        cur = ClientCursor(conn)  # the simple query protocol
        cur.execute(f"SET LOCAL rlsproxy.jwt = '{token_for(ALICE)}'")
        assert cur.statusmessage == "SET"
        assert conn.execute(WHO).fetchone() == ALICE_VIEW
        conn.commit()
        assert conn.execute(WHO).fetchone() == ANON_VIEW  # back to the startup identity
        conn.rollback()


def test_set_config_local_with_bind_parameter(proxy: RunningProxy) -> None:
    token = token_for(BOB)
    with anonymous(proxy) as conn:
        row = conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token]).fetchone()
        assert row == (token,)  # what set_config returns: the value set
        assert conn.execute(WHO).fetchone() == BOB_VIEW
        conn.rollback()  # ROLLBACK ends the switch too
        assert conn.execute(WHO).fetchone() == ANON_VIEW


def test_set_config_literal_simple_protocol_replies_like_postgres(proxy: RunningProxy) -> None:
    token = token_for(ALICE)
    with anonymous(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn)
        cur.execute(f"select set_config('rlsproxy.jwt', '{token}', true)")
        assert cur.description is not None and cur.description[0].name == "set_config"
        assert cur.fetchall() == [(token,)]
        assert cur.statusmessage == "SELECT 1"
        # outside a transaction block, a local setting lasts for that statement only
        assert conn.execute(WHO).fetchone() == ANON_VIEW


def test_session_scope_and_reset(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        cur = ClientCursor(conn)
        cur.execute(f"SET rlsproxy.jwt = '{token_for(BOB)}'")
        assert cur.statusmessage == "SET"
        assert conn.execute(WHO).fetchone() == BOB_VIEW
        assert conn.execute(WHO).fetchone() == BOB_VIEW  # later transactions too
        conn.execute("select set_config('rlsproxy.jwt', %s, false)", [""])  # empty: startup identity
        assert conn.execute(WHO).fetchone() == ALICE_VIEW
        conn.execute("select set_config('rlsproxy.jwt', %s, false)", [token_for(BOB)])
        assert conn.execute(WHO).fetchone() == BOB_VIEW
        cur.execute("RESET rlsproxy.jwt")
        assert cur.statusmessage == "RESET"
        assert conn.execute(WHO).fetchone() == ALICE_VIEW


def test_bad_token_fails_the_statement_not_the_connection(proxy: RunningProxy) -> None:
    expired = token_for(BOB, ttl_s=-3600)
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        conn.execute("insert into notes (user_id, title) values (%s, 'in-band rollback')", [ALICE])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="expired"):
            conn.execute("select set_config('rlsproxy.jwt', %s, true)", [expired])
        # the transaction is aborted as Postgres would abort it; the insert does not survive
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute(WHO).fetchone() == ALICE_VIEW  # identity unchanged
        assert conn.execute("select count(*) from notes where title = 'in-band rollback'").fetchone() == (0,)
        conn.rollback()
        from rlsproxy.auth.mint import mint_token

        forged = mint_token("another-secret-0123456789abcdef0123456789", sub=BOB, role="authenticated")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="signature"):
            ClientCursor(conn).execute(f"SET LOCAL rlsproxy.jwt = '{forged}'")
        conn.rollback()
        assert conn.execute(WHO).fetchone() == ALICE_VIEW


def test_in_band_cannot_become_a_service_or_a_forbidden_role(make_proxy: Any, pg: Any, tmp_path: Any) -> None:
    from tests.integration.test_bypass_audit import bypass_config

    proxy = make_proxy(bypass_config(pg, tmp_path / "audit.jsonl"))
    with anonymous(proxy) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="connect with their label"):
            conn.execute("select set_config('rlsproxy.jwt', %s, true)", [service_token()])
        conn.rollback()
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match='role "service_role"'):
            conn.execute(
                "select set_config('rlsproxy.jwt', %s, true)", [token_for(ALICE, role="service_role")]
            )
        conn.rollback()
        assert conn.execute(WHO).fetchone() == ANON_VIEW
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["bypass.denied", "bypass.denied"]
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_in_band_switches_total", {"outcome": "bypass_no_label"}) == 1


def test_disabled_in_band(make_proxy: Any, pg: Any) -> None:
    config = base_config(pg)
    proxy = make_proxy(replace(config, jwt=replace(config.jwt, in_band=False)))
    with anonymous(proxy) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="in_band: false"):
            conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token_for(ALICE)])


@pytest.mark.parametrize("name", ["", "s1"])
def test_set_local_in_the_extended_protocol(proxy: RunningProxy, name: str) -> None:
    """psycopg sends a repeated statement as a named prepared statement after five executions: the
    SET forms work in the extended protocol too, named or unnamed, with the reply SET gets."""
    from rlsproxy.wire import frontend as fe
    from tests.support.rawpg import RawConnection

    raw = RawConnection(proxy.port, {"user": "app", "database": "app", "rlsproxy.jwt": ""})
    try:
        sql = f"SET LOCAL rlsproxy.jwt = '{token_for(ALICE)}'"
        raw.send(fe.query("BEGIN") + fe.parse(name, sql) + fe.bind(name, ()) + fe.execute() + fe.SYNC)
        replies = raw.until_ready(2)
        assert [t for t, _ in replies] == ["C", "Z", "1", "2", "C", "Z"]
        assert replies[4][1] == b"SET\x00"
        raw.send(fe.query(WHO))
        assert next(body for t, body in raw.until_ready() if t == "D").endswith(
            b"authenticated\x00\x00\x00\x013"
        )
        raw.send(fe.query("COMMIT") + fe.query(WHO))
        assert next(body for t, body in raw.until_ready(2) if t == "D").endswith(b"anon\x00\x00\x00\x012")
    finally:
        raw.close()


def test_psycopg_prepares_the_repeated_switch_and_it_keeps_working(proxy: RunningProxy) -> None:
    """The sixth identical SET LOCAL goes out as a named statement (prepare_threshold 5)."""
    with anonymous(proxy) as conn:
        for i in range(20):
            user = (ALICE, BOB)[i % 2]
            conn.execute(f"SET LOCAL rlsproxy.jwt = '{token_for(user)}'")
            assert conn.execute(WHO).fetchone() == (user, "authenticated", 3)
            conn.commit()
            assert conn.execute(WHO).fetchone() == ANON_VIEW
            conn.commit()
        prepared = conn.execute("select count(*) from pg_prepared_statements where not from_sql").fetchone()
        assert prepared is not None and prepared[0] >= 1  # the driver did prepare


def test_a_switch_may_lead_a_multi_statement_query(proxy: RunningProxy) -> None:
    """pgx's simple protocol sends a batch as one query string: the switch applies to what follows."""
    from rlsproxy.wire import frontend as fe
    from tests.support.rawpg import RawConnection

    raw = RawConnection(proxy.port, {"user": "app", "database": "app", "rlsproxy.jwt": ""})
    try:
        raw.send(fe.query(f"select set_config('rlsproxy.jwt', '{token_for(BOB)}', true); {WHO}"))
        rows = [body for t, body in raw.until_ready() if t == "D"]
        assert (
            len(rows) == 2 and rows[1].endswith(b"authenticated\x00\x00\x00\x013") and BOB.encode() in rows[1]
        )
        raw.send(fe.query(WHO))  # the switch was local to that query's transaction
        assert next(body for t, body in raw.until_ready() if t == "D").endswith(b"anon\x00\x00\x00\x012")
    finally:
        raw.close()


def test_pipelined_transactions_switch_identity(proxy: RunningProxy) -> None:
    """Several transactions in one pipeline: the context prefix sent ahead of later batches inside a
    switched transaction must not undo the switch."""
    with anonymous(proxy) as conn:
        results = []
        with conn.pipeline():
            for token in (token_for(ALICE), token_for(BOB), token_for(ALICE)):
                with conn.transaction():
                    conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token])
                    results.append(conn.execute(WHO))
                    results.append(conn.execute(WHO))
            results.append(conn.execute(WHO))
        seen = [cur.fetchone() for cur in results]
    assert seen == [ALICE_VIEW, ALICE_VIEW, BOB_VIEW, BOB_VIEW, ALICE_VIEW, ALICE_VIEW, ANON_VIEW]


def test_psycopg_pool_interleaved_users(proxy: RunningProxy) -> None:
    tokens = {ALICE: token_for(ALICE), BOB: token_for(BOB)}
    with ConnectionPool(proxy.dsn(token=""), min_size=2, max_size=2, open=True) as pool:
        for user in itertools.islice(itertools.cycle((ALICE, BOB)), 200):
            with pool.connection() as conn, conn.transaction():
                conn.execute("select set_config('rlsproxy.jwt', %s, true)", [tokens[user]])
                uid, role, visible = conn.execute(WHO).fetchone() or ()
                claims = conn.execute("select auth.jwt()->>'sub'").fetchone()
                assert (uid, role, visible, claims) == (user, "authenticated", 3, (user,))
                own = conn.execute("select count(*) from notes where user_id = %s", [user]).fetchone()
                assert own == (2,)
        with pool.connection() as conn:  # handed back after SET LOCAL: startup identity again
            assert conn.execute(WHO).fetchone() == ANON_VIEW


def test_asyncpg_pool_interleaved_users(proxy: RunningProxy) -> None:
    import asyncpg

    tokens = {ALICE: token_for(ALICE), BOB: token_for(BOB)}

    async def main() -> list[tuple[Any, ...]]:
        pool = await asyncpg.create_pool(
            host="127.0.0.1",
            port=proxy.port,
            user="app",
            database="app",
            min_size=2,
            max_size=2,
            server_settings={"rlsproxy.jwt": ""},
        )
        seen = []
        try:

            async def one(user: str) -> tuple[Any, ...]:
                async with pool.acquire() as conn, conn.transaction():
                    value = await conn.fetchval("select set_config('rlsproxy.jwt', $1, true)", tokens[user])
                    assert value == tokens[user]
                    row = await conn.fetchrow(WHO)
                    return (user, *row)

            for batch in range(50):
                users = (ALICE, BOB) if batch % 2 else (BOB, ALICE)
                seen += await asyncio.gather(*(one(u) for u in users))
            async with pool.acquire() as conn:
                seen.append(("anon", *(await conn.fetchrow(WHO))))
        finally:
            await pool.close()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 101
    for user, uid, role, visible in seen[:-1]:
        assert (uid, role, visible) == (user, "authenticated", 3)
    assert seen[-1][1:] == ANON_VIEW


def test_sqlalchemy_begin_event_sets_the_token(proxy: RunningProxy) -> None:
    import contextvars

    from sqlalchemy import create_engine, event, text

    current_token: contextvars.ContextVar[str] = contextvars.ContextVar("current_token")
    engine = create_engine(
        f"postgresql+psycopg://app@127.0.0.1:{proxy.port}/app",
        connect_args={"options": "-c rlsproxy.jwt="},
        pool_size=2,
        max_overflow=0,
    )

    @event.listens_for(engine, "begin")
    def set_identity(conn: Any) -> None:
        conn.exec_driver_sql("select set_config('rlsproxy.jwt', %s, true)", (current_token.get(),))

    tokens = {ALICE: token_for(ALICE), BOB: token_for(BOB)}
    try:
        for user in itertools.islice(itertools.cycle((ALICE, BOB)), 100):
            current_token.set(tokens[user])
            with engine.begin() as conn:
                assert tuple(conn.execute(text(WHO)).one()) == (user, "authenticated", 3)
    finally:
        engine.dispose()


def test_node_postgres_pool_prisma_pattern(proxy: RunningProxy, tmp_path: Any) -> None:
    """node-postgres' pg.Pool (what Prisma's driver adapters use), installed from npm for the test."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm are needed for this test (Debian: apt-get install nodejs npm)"
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(tmp_path), "pg@8"],
        check=True,
        timeout=300,
        env=dict(os.environ, npm_config_cache=str(tmp_path / ".npm")),
    )
    script = Path(__file__).parent / "js" / "node_pg_pool.js"
    tokens = {ALICE: token_for(ALICE), BOB: token_for(BOB)}
    out = subprocess.run(
        [node, str(script)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(
            os.environ,
            NODE_PATH=str(tmp_path / "node_modules"),
            RLSPROXY_TEST=json.dumps({"port": proxy.port, "tokens": tokens, "rounds": 100}),
        ),
    )
    report = json.loads(out.stdout)
    assert len(report["results"]) == 200
    for row in report["results"]:
        assert row == {
            "user": row["user"],
            "echoed": True,
            "uid": row["user"],
            "role": "authenticated",
            "n": 3,
        }
    assert report["after"] == {"uid": "anon", "n": 2}


def test_prefix_pipelined_inside_a_switched_transaction_keeps_the_switch(proxy: RunningProxy) -> None:
    """One write, a Sync after every statement: the proxy cannot know the transaction is open when
    it sends the prefix for the later batches, so that prefix must leave the in-band switch alone
    (the context statement that keeps it) and the one after COMMIT must not."""
    from rlsproxy.wire import frontend as fe
    from tests.support.rawpg import RawConnection

    def batch(sql: str, *params: str) -> bytes:
        return fe.parse("", sql) + fe.bind("", params) + fe.execute() + fe.SYNC

    who = "select coalesce(auth.uid()::text, 'anon') || '/' || current_user"
    conn = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        conn.send(
            batch("begin")
            + batch("select set_config('rlsproxy.jwt', $1, true)", token_for(BOB))
            + batch(who)
            + batch(who)
            + batch("commit")
            + batch(who)
        )
        replies = conn.until_ready(6)
    finally:
        conn.close()
    assert not [m for m in replies if m[0] == "E"], replies
    rows = [body[6:].decode() for kind, body in replies if kind == "D"]
    # The set_config row, then: Bob twice inside the transaction, Alice again after COMMIT.
    assert rows[1:] == [f"{BOB}/authenticated", f"{BOB}/authenticated", f"{ALICE}/authenticated"]
