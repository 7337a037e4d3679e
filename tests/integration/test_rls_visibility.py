"""The seed's promise, through the proxy: A and B see own + public, anonymous sees public only."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import asyncpg
import psycopg
import pytest

from rlsproxy.devcluster import ALICE, BOB
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy

ALICE_SEES = ["alice private", "alice public", "bob public"]
BOB_SEES = ["alice public", "bob private", "bob public"]
ANON_SEES = ["alice public", "bob public"]
TITLES = "SELECT title FROM notes ORDER BY title"


def titles(conn: psycopg.Connection[Any], *, prepare: bool | None = None) -> list[str]:
    return [r[0] for r in conn.execute(TITLES, prepare=prepare).fetchall()]


@pytest.mark.parametrize("prepare", [False, True], ids=["extended", "prepared"])
def test_two_users_and_anonymous_with_psycopg(proxy: RunningProxy, prepare: bool) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as a:
        assert titles(a, prepare=prepare) == ALICE_SEES
        assert titles(a, prepare=prepare) == ALICE_SEES  # second transaction gets its own context
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as b:
        assert titles(b, prepare=prepare) == BOB_SEES
    with psycopg.connect(proxy.dsn(options="'-c rlsproxy.jwt='"), autocommit=True) as anon:
        assert titles(anon, prepare=prepare) == ANON_SEES


def test_simple_protocol_and_explicit_transaction(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(TITLES)
        assert [r[0] for r in cur.fetchall()] == ALICE_SEES
        cur.execute("select auth.uid()::text, current_user")
        assert cur.fetchone() == (ALICE, "authenticated")
    with psycopg.connect(proxy.dsn(token=token_for(BOB))) as conn:  # psycopg opens BEGIN itself
        assert titles(conn) == BOB_SEES
        assert conn.execute("select current_setting('request.jwt.claims')::jsonb->>'sub'").fetchone() == (
            BOB,
        )
        conn.commit()
        assert conn.execute("select current_user").fetchone() == ("authenticated",)


def test_token_as_password(proxy: RunningProxy) -> None:
    dsn = f"postgresql://app:{token_for(BOB)}@127.0.0.1:{proxy.port}/app"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert titles(conn) == BOB_SEES


def test_writes_are_checked_by_policies(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK: cannot insert as bob
            conn.execute("insert into notes (user_id, title) values (%s, 'forged')", (BOB,))
        cur = conn.execute("update notes set title = 'hijacked' where title = 'bob private'")
        assert cur.rowcount == 0
        with conn.transaction(force_rollback=True):
            cur = conn.execute(
                "insert into notes (user_id, title) values (%s, 'mine') returning title", (ALICE,)
            )
            assert cur.fetchone() == ("mine",)


def test_pipeline_mode_batches(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        with conn.pipeline() as p:
            curs = [conn.execute("select count(*) from notes") for _ in range(5)]
            p.sync()
            curs.append(conn.execute("select auth.uid()::text"))
        assert [c.fetchone() for c in curs[:5]] == [(3,)] * 5
        assert curs[5].fetchone() == (ALICE,)


def test_psql_with_token_in_options(proxy: RunningProxy, pg: Any) -> None:
    env = dict(os.environ, PGOPTIONS=f"-c rlsproxy.jwt={token_for(BOB)}")
    out = subprocess.run(
        [
            str(pg.bindir / "psql"),
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(proxy.port),
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            TITLES,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    assert out.stdout.split("\n")[:3] == BOB_SEES


def test_asyncpg_with_server_settings(proxy: RunningProxy) -> None:
    async def main() -> tuple[list[str], list[str]]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=proxy.port,
            user="app",
            database="app",
            server_settings={"rlsproxy.jwt": token_for(ALICE)},
        )
        try:
            stmt = await conn.prepare(TITLES)
            first = [r[0] for r in await stmt.fetch()]
            async with conn.transaction():
                second = [r[0] for r in await conn.fetch(TITLES)]
            return first, second
        finally:
            await conn.close()

    first, second = asyncio.run(main())
    assert first == ALICE_SEES and second == ALICE_SEES
