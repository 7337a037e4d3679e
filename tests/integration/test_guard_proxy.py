"""Guard rules end to end: refused before Postgres, right SQLSTATE, transaction semantics kept."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import pq

from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy

REFUSED = [
    ("SET ROLE service_role", "42501"),
    ("SET ROLE NONE", "42501"),
    ("set role to default", "42501"),
    ("SET LOCAL ROLE authenticated", "42501"),
    ("SET \"role\" = 'anon'", "42501"),
    ("/* hi */ RESET ROLE", "42501"),
    ("RESET SESSION AUTHORIZATION", "42501"),
    ("SET SESSION AUTHORIZATION authenticator", "42501"),
    ("select set_config('role', 'service_role', false)", "42501"),
    ("select set_config('request.jwt.claims', '{\"sub\":\"x\"}', true)", "42501"),
    ("SET LOCAL request.jwt.claims = '{}'", "42501"),
    ("SET rlsproxy.label = 'x'", "42501"),
    ("select set_config('rlsproxy.jwt', 'x', true), 1", "42501"),
    ("select 1; select pg_catalog.set_config('ROLE', 'anon', true)", "42501"),
    ("do $$ begin perform set_config('role', 'service_role', true); end $$", "42501"),
    ("EXECUTE rlsproxy_ctx('service_role', '{}')", "42501"),
    ("VACUUM notes", "25001"),
    ("CREATE INDEX CONCURRENTLY ON notes (title)", "25001"),
]


@pytest.mark.parametrize(("sql", "code"), REFUSED)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_refused_then_connection_still_serves(
    proxy: RunningProxy, sql: str, code: str, protocol: str
) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
        with pytest.raises(psycopg.Error) as info:
            cur.execute(sql.encode() if protocol == "simple" else sql)  # type: ignore[arg-type]
        assert info.value.sqlstate == code
        assert "rlsproxy" in str(info.value)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("select current_user, auth.uid()::text").fetchone() == ("authenticated", ALICE)


def test_refusal_inside_transaction_aborts_it(proxy: RunningProxy) -> None:
    """A refused statement must abort the transaction as a real error would: no COMMIT of earlier work."""
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        conn.execute("insert into notes (user_id, title) values (%s, 'should vanish')", (ALICE,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("set role service_role")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.commit()  # Postgres turns COMMIT of a failed transaction into ROLLBACK
        assert conn.execute("select count(*) from notes where title = 'should vanish'").fetchone() == (0,)


def test_reserved_statement_name_in_extended_protocol(proxy: RunningProxy) -> None:
    """Binding the proxy's own context statement with chosen values would pick any role: refused."""
    from rlsproxy.wire import frontend as fe
    from tests.support.rawpg import RawConnection, error_fields

    raw = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        raw.send(fe.query("select 1"))
        raw.until_ready()
        raw.send(fe.bind("rlsproxy_ctx", ("service_role", "{}")) + fe.execute() + fe.SYNC)
        replies = raw.until_ready()
        assert [t for t, _ in replies] == ["E", "Z"]
        assert error_fields(replies[0])["C"] == "42501"
        raw.send(fe.query("select count(*) from notes"))
        replies = raw.until_ready()
        assert ("D", b"\x00\x01\x00\x00\x00\x013") in replies
    finally:
        raw.close()


def test_function_call_message_refused(proxy: RunningProxy) -> None:
    from rlsproxy.wire import backend as be
    from tests.support.rawpg import RawConnection, error_fields

    raw = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        body = (1255).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
        raw.send(be.message(ord("F"), body))
        replies = raw.until_ready()
        assert error_fields(replies[0])["C"] == "42501"
        assert replies[-1] == ("Z", b"I")
    finally:
        raw.close()


def test_discard_all_and_reset_all_keep_identity(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        conn.execute("DISCARD ALL")
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        conn.execute("RESET ALL")
        assert conn.execute("select current_user, auth.uid()::text").fetchone() == ("authenticated", ALICE)
        cur = psycopg.ClientCursor(conn)
        cur.execute("DEALLOCATE ALL")
        cur.execute("select count(*) from notes")
        assert cur.fetchone() == (3,)


def test_asyncpg_pool_reset_idiom(proxy: RunningProxy) -> None:
    import asyncio

    import asyncpg

    async def main() -> list[Any]:
        pool = await asyncpg.create_pool(
            host="127.0.0.1",
            port=proxy.port,
            user="app",
            database="app",
            min_size=1,
            max_size=1,
            server_settings={
                "rlsproxy.jwt": token_for(ALICE),
                "application_name": "billing",
                "TimeZone": "Asia/Tokyo",
            },
        )
        try:
            seen = []
            for _ in range(3):  # each release runs asyncpg's reset (RESET ALL in a DO/ batch)
                async with pool.acquire() as conn:
                    seen.append(
                        tuple(
                            await conn.fetchrow(
                                "select count(*), current_setting('application_name'), "
                                "current_setting('TimeZone') from notes"
                            )
                        )
                    )
            return seen
        finally:
            await pool.close()

    # The startup settings survive RESET ALL, as they would on a direct connection.
    assert asyncio.run(main()) == [(3, "billing", "Asia/Tokyo")] * 3


@pytest.mark.parametrize("statement", ["RESET ALL", "DISCARD ALL"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_reset_keeps_startup_settings(proxy: RunningProxy, statement: str, protocol: str) -> None:
    dsn = proxy.dsn(token=token_for(ALICE), application_name="reporting")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set application_name = 'changed'")
        cur = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
        cur.execute(statement)
        assert conn.execute("select current_setting('application_name')").fetchone() == ("reporting",)
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


def test_statements_after_commit_in_one_query_run_in_their_context(proxy: RunningProxy, pg: Any) -> None:
    """After a COMMIT in one query string the later statements run in a new transaction: the proxy
    puts the context before them again (they used to be refused up front)."""
    from rlsproxy.wire import frontend as fe
    from tests.support.rawpg import RawConnection

    raw = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        raw.send(
            fe.query(
                "begin; insert into notes (user_id, title) values (auth.uid(), 'x1'); commit; "
                "select auth.uid()::text || ' ' || current_user, count(*) from notes where title = 'x1'"
            )
        )
        replies = raw.until_ready()
        assert [t for t, _ in replies] == ["C", "C", "C", "T", "D", "C", "Z"], replies
        row = replies[4][1]  # two columns: the identity after the COMMIT, and the row it committed
        assert f"{ALICE} authenticated".encode() in row and row.endswith(b"\x00\x00\x00\x011"), row
        assert replies[-1][1] == b"I"
    finally:
        raw.close()
        pg.psql("delete from notes where title = 'x1'")
