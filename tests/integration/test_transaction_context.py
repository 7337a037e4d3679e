"""Where the context prefix goes in a transaction, proved with real clients against a real Postgres.

The prefix goes before the first statement that reads or writes, never before BEGIN ISOLATION LEVEL,
SET TRANSACTION or a ROLLBACK of a failed transaction; after anything that ends the context
(COMMIT in a pipeline, ... AND CHAIN, ROLLBACK TO SAVEPOINT, RESET ALL) it is put back before the
next statement that needs it. Every test is judged by facts read inside the transaction
(current_user, auth.uid(), the isolation level, the rows visible) and, where it writes, by the
rows the superuser finds afterwards; never by whether an error came back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor

from rlsproxy.devcluster import ALICE
from rlsproxy.wire import frontend as fe
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy
from tests.support.rawpg import Message, RawConnection, data_rows, errors

TITLE = "ttc:"  # every note these tests write starts with it (deleted after each test)
# The facts: role, auth.uid(), isolation level, seed notes visible (Alice 3, anon 2).
WHO = (
    "select current_user::text, coalesce(auth.uid()::text, 'none'), "
    "current_setting('transaction_isolation'), "
    f"(select count(*) from notes where title not like '{TITLE}%')::int"
)
WHO_P = WHO + " where $1::int = 1"  # the same with a bind parameter (node-postgres, asyncpg)
INSERT = "insert into notes (user_id, title) values (%s, %s)"


def alice(level: str = "read committed") -> tuple[str, str, str, int]:
    return ("authenticated", ALICE, level, 3)


def alice_raw(level: str = "read committed") -> list[str | None]:
    return ["authenticated", ALICE, level, "3"]


def insert_sql(title: str) -> str:
    """An INSERT of one of Alice's notes, literal values (the simple protocol)."""
    return f"insert into notes (user_id, title) values ('{ALICE}', '{TITLE}{title}')"


@pytest.fixture(autouse=True)
def clean_notes(pg: Any) -> Iterator[None]:
    yield
    pg.psql(f"delete from notes where title like '{TITLE}%'")


def written(pg: Any) -> dict[str, str]:
    """The notes these tests wrote, as the superuser sees them: title (without the mark) -> user_id."""
    out = pg.psql(f"select title, user_id from notes where title like '{TITLE}%' order by title")
    pairs = (line.split("|") for line in out.splitlines() if line)
    return {title.removeprefix(TITLE): user for title, user in pairs}


def alice_conn(proxy: RunningProxy, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(token=token_for(ALICE)), **kw)


# -- raw protocol helpers ---------------------------------------------------------------------------


def raw(proxy: RunningProxy, token: str) -> RawConnection:
    conn = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token}"}
    )
    assert conn.greeting[-1][0] == "Z", conn.greeting
    return conn


def ext(sql: str, *params: str, name: str = "") -> bytes:
    """Parse, Bind, Execute of one statement, no Sync (a pipeline)."""
    return fe.parse(name, sql) + fe.bind(name, params) + fe.execute()


def tags(replies: list[Message]) -> list[str]:
    return [body[:-1].decode() for t, body in replies if t == "C"]


def statuses(replies: list[Message]) -> list[str]:
    return [body.decode() for t, body in replies if t == "Z"]


def assert_idle_as_alice(conn: RawConnection) -> None:
    conn.send(fe.query(WHO))
    replies = conn.until_ready()
    assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["I"], replies


# == 1. isolation levels ============================================================================

LEVELS = [
    pytest.param(("BEGIN ISOLATION LEVEL SERIALIZABLE",), "serializable", id="begin-serializable"),
    pytest.param(("BEGIN ISOLATION LEVEL REPEATABLE READ",), "repeatable read", id="begin-repeatable-read"),
    pytest.param(
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE",),
        "serializable",
        id="start-transaction-serializable",
    ),
    pytest.param(
        ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ",),
        "repeatable read",
        id="start-transaction-repeatable-read",
    ),
    pytest.param(("BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), "serializable", id="prisma-form"),
]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize(("opening", "level"), LEVELS)
def test_isolation_level_opening_keeps_identity_psycopg(
    proxy: RunningProxy, pg: Any, opening: tuple[str, ...], level: str, protocol: str
) -> None:
    with alice_conn(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        for statement in opening:
            cur.execute(statement)
        assert cur.execute(WHO).fetchone() == alice(level)
        cur.execute(insert_sql("isolated"))
        assert cur.execute(WHO).fetchone() == alice(level)  # still the same transaction
        cur.execute("COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert written(pg) == {"isolated": ALICE}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_serializable_read_only_deferrable_keeps_identity_psycopg(proxy: RunningProxy, protocol: str) -> None:
    with alice_conn(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
        assert cur.execute(WHO).fetchone() == alice("serializable")
        flags = "select current_setting('transaction_read_only'), current_setting('transaction_deferrable')"
        assert cur.execute(flags).fetchone() == ("on", "on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # Postgres' own 25006
            cur.execute(insert_sql("read-only"))
        cur.execute("ROLLBACK")
        assert cur.execute(WHO).fetchone() == alice()


@pytest.mark.parametrize(
    ("level", "read_only", "deferrable", "expected"),
    [
        (psycopg.IsolationLevel.SERIALIZABLE, None, None, "serializable"),
        (psycopg.IsolationLevel.REPEATABLE_READ, None, None, "repeatable read"),
        (psycopg.IsolationLevel.SERIALIZABLE, True, True, "serializable"),
    ],
)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_psycopg_isolation_level_attribute_keeps_identity(
    proxy: RunningProxy,
    pg: Any,
    level: psycopg.IsolationLevel,
    read_only: bool | None,
    deferrable: bool | None,
    expected: str,
    protocol: str,
) -> None:
    """psycopg's own non-autocommit mode sends BEGIN ISOLATION LEVEL ... before the first statement."""
    with alice_conn(proxy) as conn:
        conn.isolation_level = level
        conn.read_only = read_only
        conn.deferrable = deferrable
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        for _ in range(2):  # twice: the second transaction opens the same way
            assert cur.execute(WHO).fetchone() == alice(expected)
            if not read_only:
                cur.execute(insert_sql(f"attr-{protocol}"))
            conn.commit()
    assert written(pg) == ({} if read_only else {f"attr-{protocol}": ALICE})


def test_psycopg_pipeline_serializable_keeps_identity(proxy: RunningProxy, pg: Any) -> None:
    """Pipeline mode: BEGIN ISOLATION LEVEL SERIALIZABLE and the statements go unsynced together."""
    with alice_conn(proxy) as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        with conn.pipeline():
            first = conn.execute(WHO)
            conn.execute(INSERT, [ALICE, TITLE + "pipelined"])
            second = conn.execute(WHO)
            conn.commit()
        assert (first.fetchone(), second.fetchone()) == (alice("serializable"), alice("serializable"))
    assert written(pg) == {"pipelined": ALICE}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_set_transaction_snapshot_keeps_identity(proxy: RunningProxy, pg: Any, protocol: str) -> None:
    """Import a snapshot exported by another transaction: a note committed after the export is not
    seen, and the identity is Alice's."""
    with psycopg.connect(pg.dsn(), autocommit=True) as exporter:
        exporter.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot = exporter.execute("select pg_export_snapshot()").fetchone()
        assert snapshot is not None
        with psycopg.connect(pg.dsn(), autocommit=True) as other:  # committed after the export
            other.execute(INSERT, [ALICE, TITLE + "after-export"])
        with alice_conn(proxy, autocommit=True) as conn:
            cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot[0]}'")
            assert cur.execute(WHO).fetchone() == alice("repeatable read")
            seen = f"select count(*) from notes where title = '{TITLE}after-export'"
            assert cur.execute(seen).fetchone() == (0,)  # the imported snapshot, not a new one
            cur.execute("COMMIT")
            assert cur.execute(seen).fetchone() == (1,)  # a new transaction sees it, as Alice
            assert cur.execute(WHO).fetchone() == alice()
        exporter.execute("COMMIT")


def test_psycopg_autocommit_pipeline_begin_serializable_keeps_identity(proxy: RunningProxy, pg: Any) -> None:
    """Autocommit pipeline: the client's own BEGIN ISOLATION LEVEL and its statements, unsynced."""
    with alice_conn(proxy, autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            who = conn.execute(WHO)
            conn.execute(INSERT, [ALICE, TITLE + "pipelined"])
            conn.execute("COMMIT")
        assert who.fetchone() == alice("serializable")
    assert written(pg) == {"pipelined": ALICE}


def test_plain_begin_and_first_statement_in_one_extended_batch_run_as_alice(proxy: RunningProxy) -> None:
    """What pgjdbc sends for every transaction outside autocommit: BEGIN and the first statement,
    Parse/Bind/Execute each, one Sync. Postgres analyses a statement at its Parse (and plans it at
    its Bind) as the role current then, so the context must be in place before the Parse."""
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(ext("BEGIN") + ext(WHO) + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["T"], replies
        conn.send(fe.query("COMMIT"))
        assert statuses(conn.until_ready()) == ["I"]
        assert_idle_as_alice(conn)
    finally:
        conn.close()


def test_isolation_level_in_one_query_string_and_one_pipeline(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(fe.query(f"BEGIN ISOLATION LEVEL SERIALIZABLE; {WHO}; COMMIT"))
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw("serializable")] and statuses(replies) == ["I"]
        conn.send(ext("BEGIN ISOLATION LEVEL SERIALIZABLE") + ext(WHO) + ext("COMMIT") + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw("serializable")] and statuses(replies) == ["I"]
        assert_idle_as_alice(conn)
    finally:
        conn.close()


def _asyncpg_connect(port: int, token: str) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    return asyncpg.connect(
        host="127.0.0.1", port=port, user="app", database="app", server_settings={"rlsproxy.jwt": token}
    )


@pytest.mark.parametrize(
    ("isolation", "readonly", "deferrable", "expected"),
    [
        ("serializable", False, False, "serializable"),
        ("repeatable_read", False, False, "repeatable read"),
        ("serializable", True, True, "serializable"),
    ],
)
def test_asyncpg_transaction_isolation_keeps_identity(
    proxy: RunningProxy, pg: Any, isolation: str, readonly: bool, deferrable: bool, expected: str
) -> None:
    """asyncpg sends BEGIN ISOLATION LEVEL ... as a simple query; execute() without arguments is simple
    too, fetchrow() with arguments is extended."""

    async def main() -> list[Any]:
        conn = await _asyncpg_connect(proxy.port, token_for(ALICE))
        try:
            async with conn.transaction(isolation=isolation, readonly=readonly, deferrable=deferrable):
                seen = [tuple(await conn.fetchrow(WHO_P, 1))]
                if not readonly:
                    await conn.execute(insert_sql("asyncpg-simple"))
                    await conn.execute(
                        INSERT.replace("%s", "$1", 1).replace("%s", "$2"), ALICE, TITLE + "ext"
                    )
                seen.append(tuple(await conn.fetchrow(WHO_P, 1)))
                seen.append(await conn.fetchval("select current_setting('transaction_read_only')"))
            seen.append(tuple(await conn.fetchrow(WHO)))
            return seen
        finally:
            await conn.close()

    seen = asyncio.run(main())
    assert seen == [alice(expected), alice(expected), "on" if readonly else "off", alice()]
    assert written(pg) == ({} if readonly else {"asyncpg-simple": ALICE, "ext": ALICE})


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node-postgres (pg@8) installed from npm once for this module."""
    npm = shutil.which("npm")
    assert npm, "node and npm are needed for this test (Debian: apt-get install nodejs npm)"
    where = tmp_path_factory.mktemp("node")
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(where), "pg@8"],
        check=True,
        timeout=300,
        env=dict(os.environ, npm_config_cache=str(where / ".npm")),
    )
    return where / "node_modules"


def run_node(script: str, node_modules: Path, settings: dict[str, Any]) -> Any:
    node = shutil.which("node")
    assert node, "node is needed for this test"
    out = subprocess.run(
        [node, str(Path(__file__).parent / "js" / script)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NODE_PATH=str(node_modules), RLSPROXY_TEST=json.dumps(settings)),
    )
    return json.loads(out.stdout)


def test_node_postgres_isolation_levels_keep_identity(
    proxy: RunningProxy, pg: Any, node_modules: Path
) -> None:
    """node-postgres: BEGIN ... as a simple query, then parameterised (extended) and plain (simple)
    queries, an INSERT, COMMIT; the last case switches in-band from an anonymous session."""
    openings = [
        ["BEGIN ISOLATION LEVEL SERIALIZABLE"],
        ["BEGIN ISOLATION LEVEL REPEATABLE READ"],
        ["START TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        ["BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
        ["BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"],
    ]
    report = run_node(
        "node_pg_isolation.js",
        node_modules,
        {
            "port": proxy.port,
            "token": token_for(ALICE),
            "alice": ALICE,
            "who": WHO,
            "whoParam": WHO_P,
            "title": TITLE,
            "openings": openings,
        },
    )
    expected = ["serializable", "repeatable read", "serializable", "serializable", "serializable"]
    assert len(report["cases"]) == len(openings) + 1
    for case, level in zip(report["cases"], [*expected, "serializable"], strict=True):
        assert case["extended"] == list(alice(level)), case
        assert case["simple"] == list(alice(level)), case
        assert case["error"] is None or (case["readOnly"] and case["error"] == "25006"), case
    assert report["after"] == list(alice())
    assert written(pg) == {f"node-{i}": ALICE for i in (0, 1, 2, 3, 5)}


# == 2. a pipelined ROLLBACK after an error =========================================================


def test_pipelined_rollback_after_error_simple_queries(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(fe.query("BEGIN") + fe.query("SELECT 1/0") + fe.query("ROLLBACK"))
        replies = conn.until_ready(3)
        assert [e["C"] for e in errors(replies)] == ["22012"], replies  # Postgres' own, nothing else
        assert tags(replies) == ["BEGIN", "ROLLBACK"] and statuses(replies) == ["T", "E", "I"], replies
        assert_idle_as_alice(conn)
    finally:
        conn.close()


def test_pipelined_rollback_after_error_extended_batches(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(ext("BEGIN") + fe.SYNC + ext("SELECT 1/0") + fe.SYNC + ext("ROLLBACK") + fe.SYNC)
        replies = conn.until_ready(3)
        assert [e["C"] for e in errors(replies)] == ["22012"], replies
        assert tags(replies) == ["BEGIN", "ROLLBACK"] and statuses(replies) == ["T", "E", "I"], replies
        assert_idle_as_alice(conn)
    finally:
        conn.close()


def test_pipelined_rollback_after_error_with_write_in_serializable(proxy: RunningProxy, pg: Any) -> None:
    """The same with a write before the error: the ROLLBACK undoes it, the next write is Alice's."""
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(
            fe.query("BEGIN ISOLATION LEVEL SERIALIZABLE")
            + fe.query(insert_sql("rolled-back"))
            + fe.query("SELECT 1/0")
            + fe.query("ROLLBACK")
            + fe.query(insert_sql("after"))
        )
        replies = conn.until_ready(5)
        assert [e["C"] for e in errors(replies)] == ["22012"], replies
        assert statuses(replies) == ["T", "T", "E", "I", "I"], replies
        assert_idle_as_alice(conn)
    finally:
        conn.close()
    assert written(pg) == {"after": ALICE}


def test_psycopg_pipeline_rollback_after_error(proxy: RunningProxy, pg: Any) -> None:
    with alice_conn(proxy) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute(INSERT, [ALICE, TITLE + "rolled-back"])
            conn.execute("select 1/0")
            conn.execute(WHO)
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with conn.pipeline():
            after = conn.execute(WHO)
            conn.execute(INSERT, [ALICE, TITLE + "after"])
            conn.commit()
        assert after.fetchone() == alice()
    assert written(pg) == {"after": ALICE}


def test_psycopg_pipeline_transaction_block_rolls_back_after_error(proxy: RunningProxy, pg: Any) -> None:
    """conn.transaction() in a pipeline: BEGIN, the failing statement and psycopg's ROLLBACK."""
    with alice_conn(proxy, autocommit=True) as conn:
        with conn.pipeline():
            with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                conn.execute(INSERT, [ALICE, TITLE + "rolled-back"])
                conn.execute("select 1/0").fetchone()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            with conn.transaction():
                conn.execute(INSERT, [ALICE, TITLE + "after"])
                who = conn.execute(WHO)
        assert who.fetchone() == alice()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert written(pg) == {"after": ALICE}


# == 3. statements after something that ends the context ============================================


@pytest.mark.parametrize("named", [False, True])
def test_statements_after_commit_in_one_pipeline_run_as_alice(
    proxy: RunningProxy, pg: Any, named: bool
) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        ins = "insert into notes (user_id, title) values ($1, $2)"
        if named:  # named prepared statements, prepared in an earlier batch
            conn.send(fe.parse("ins", ins) + fe.parse("who", WHO) + fe.SYNC)
            assert statuses(conn.until_ready()) == ["I"]

            def insert(title: str) -> bytes:
                return fe.bind("ins", (ALICE, TITLE + title)) + fe.execute()

            who = fe.bind("who", ()) + fe.execute()
        else:

            def insert(title: str) -> bytes:
                return ext(ins, ALICE, TITLE + title)

            who = ext(WHO)
        conn.send(ext("BEGIN") + insert("before") + ext("COMMIT") + who + insert("after") + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert tags(replies) == ["BEGIN", "INSERT 0 1", "COMMIT", "SELECT 1", "INSERT 0 1"], replies
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["I"]
        assert_idle_as_alice(conn)
    finally:
        conn.close()
    assert written(pg) == {"after": ALICE, "before": ALICE}


@pytest.mark.parametrize("prepare", [None, True])
def test_psycopg_pipeline_statements_after_commit_run_as_alice(
    proxy: RunningProxy, pg: Any, prepare: bool | None
) -> None:
    with alice_conn(proxy) as conn:
        with conn.pipeline():
            conn.execute(INSERT, [ALICE, TITLE + "before"], prepare=prepare)
            conn.commit()
            who = conn.execute(WHO, prepare=prepare)
            conn.execute(INSERT, [ALICE, TITLE + "after"], prepare=prepare)
            again = conn.execute(WHO, prepare=prepare)
            conn.commit()
        assert (who.fetchone(), again.fetchone()) == (alice(), alice())
    assert written(pg) == {"after": ALICE, "before": ALICE}


def test_statements_after_commit_in_one_query_string_run_as_alice(proxy: RunningProxy, pg: Any) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(fe.query(f"BEGIN; {insert_sql('before')}; COMMIT; {WHO}; {insert_sql('after')}"))
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["I"]
    finally:
        conn.close()
    assert written(pg) == {"after": ALICE, "before": ALICE}


@pytest.mark.parametrize("end", ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_chained_transaction_runs_as_alice(proxy: RunningProxy, pg: Any, end: str, protocol: str) -> None:
    """Separate queries: the chained transaction keeps the isolation level and Alice's identity."""
    with alice_conn(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        cur.execute(insert_sql("first"))
        cur.execute(end)
        assert cur.execute(WHO).fetchone() == alice("serializable")
        cur.execute(insert_sql("chained"))
        cur.execute("COMMIT")
    kept = {"chained": ALICE} if end.startswith("ROLLBACK") else {"chained": ALICE, "first": ALICE}
    assert written(pg) == kept


@pytest.mark.parametrize("end", ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN"])
def test_chained_transaction_in_one_pipeline_and_query_string(proxy: RunningProxy, pg: Any, end: str) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(
            ext("BEGIN ISOLATION LEVEL REPEATABLE READ")
            + ext(insert_sql("pipe-first"))
            + ext(end)
            + ext(WHO)
            + ext(insert_sql("pipe-chained"))
            + ext("COMMIT")
            + fe.SYNC
        )
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw("repeatable read")] and statuses(replies) == ["I"], replies
        conn.send(
            fe.query(f"BEGIN; {insert_sql('query-first')}; {end}; {WHO}; {insert_sql('query-chained')}")
        )
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["T"], replies
        conn.send(fe.query(f"{WHO}; COMMIT"))  # the chained transaction, in a later query
        replies = conn.until_ready()
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["I"], replies
        assert_idle_as_alice(conn)
    finally:
        conn.close()
    if end.startswith("ROLLBACK"):
        assert written(pg) == {"pipe-chained": ALICE, "query-chained": ALICE}
    else:
        assert written(pg) == {
            t: ALICE for t in ("pipe-first", "pipe-chained", "query-first", "query-chained")
        }


def test_psycopg_pipeline_commit_and_chain(proxy: RunningProxy, pg: Any) -> None:
    with alice_conn(proxy, autocommit=True) as conn, conn.pipeline():
        conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        conn.execute(INSERT, [ALICE, TITLE + "first"])
        conn.execute("COMMIT AND CHAIN")
        who = conn.execute(WHO)
        conn.execute(INSERT, [ALICE, TITLE + "chained"])
        conn.execute("ROLLBACK AND CHAIN")
        again = conn.execute(WHO)
        conn.execute("COMMIT")
    assert (who.fetchone(), again.fetchone()) == (alice("serializable"), alice("serializable"))
    assert written(pg) == {"first": ALICE}


SAVEPOINT_STEPS = [
    "BEGIN",
    "SAVEPOINT a",
    f"select count(*) from notes where title not like '{TITLE}%'",
    "ROLLBACK TO SAVEPOINT a",
]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_rollback_to_savepoint_then_statements_run_as_alice(
    proxy: RunningProxy, pg: Any, protocol: str
) -> None:
    with alice_conn(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        for step in SAVEPOINT_STEPS:
            cur.execute(step)
        assert cur.execute(WHO).fetchone() == alice()
        cur.execute(insert_sql("after-savepoint"))
        cur.execute("COMMIT")
    assert written(pg) == {"after-savepoint": ALICE}


def test_rollback_to_savepoint_in_one_query_string_and_one_pipeline(proxy: RunningProxy, pg: Any) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(fe.query("; ".join([*SAVEPOINT_STEPS, WHO, insert_sql("query"), "COMMIT"])))
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies)[-1] == alice_raw() and statuses(replies) == ["I"], replies
        conn.send(b"".join(ext(s) for s in [*SAVEPOINT_STEPS, WHO, insert_sql("pipe"), "COMMIT"]) + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies)[-1] == alice_raw() and statuses(replies) == ["I"], replies
        assert_idle_as_alice(conn)
    finally:
        conn.close()
    assert written(pg) == {"pipe": ALICE, "query": ALICE}


def test_rollback_to_savepoint_set_after_a_read(proxy: RunningProxy, pg: Any) -> None:
    """The savepoint is taken after the context was set, then rolled back to: context kept."""
    with alice_conn(proxy) as conn:
        assert conn.execute(WHO).fetchone() == alice()
        conn.execute("SAVEPOINT b")
        conn.execute(WHO)
        conn.execute("ROLLBACK TO SAVEPOINT b")
        assert conn.execute(WHO).fetchone() == alice()
        conn.execute(INSERT, [ALICE, TITLE + "kept"])
        conn.commit()
    assert written(pg) == {"kept": ALICE}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_reset_all_inside_a_transaction_keeps_alice(proxy: RunningProxy, pg: Any, protocol: str) -> None:
    with alice_conn(proxy, autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert cur.execute(WHO).fetchone() == alice("repeatable read")
        cur.execute("RESET ALL")
        assert cur.execute(WHO).fetchone() == alice("repeatable read")
        cur.execute(insert_sql("after-reset"))
        cur.execute("COMMIT")
        assert cur.execute(WHO).fetchone() == alice()
    assert written(pg) == {"after-reset": ALICE}


def test_reset_all_in_one_query_string_and_one_pipeline(proxy: RunningProxy, pg: Any) -> None:
    conn = raw(proxy, token_for(ALICE))
    try:
        conn.send(fe.query(f"BEGIN; RESET ALL; {WHO}"))
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw()] and statuses(replies) == ["T"], replies
        conn.send(fe.query(f"{insert_sql('query')}; COMMIT"))
        assert not errors(conn.until_ready())
        conn.send(ext("BEGIN") + ext(WHO) + ext("RESET ALL") + ext(WHO) + ext(insert_sql("pipe")) + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies) == [alice_raw(), alice_raw()] and statuses(replies) == ["T"], replies
        conn.send(fe.query("COMMIT"))
        assert statuses(conn.until_ready()) == ["I"]
        assert_idle_as_alice(conn)
    finally:
        conn.close()
    assert written(pg) == {"pipe": ALICE, "query": ALICE}


def test_psycopg_pipeline_reset_all_keeps_alice(proxy: RunningProxy, pg: Any) -> None:
    with alice_conn(proxy) as conn:
        with conn.pipeline():
            conn.execute("RESET ALL")
            who = conn.execute(WHO)
            conn.execute(INSERT, [ALICE, TITLE + "pipe"])
            conn.commit()
        assert who.fetchone() == alice()
    assert written(pg) == {"pipe": ALICE}


# == 4. an anonymous session switching in-band in a serializable transaction =========================

SWITCH = "select set_config('rlsproxy.jwt', %s, true)"


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_in_band_switch_after_begin_serializable(proxy: RunningProxy, pg: Any, protocol: str) -> None:
    token = token_for(ALICE)
    with psycopg.connect(proxy.dsn(token=""), autocommit=True) as conn:
        cur = ClientCursor(conn) if protocol == "simple" else conn.cursor()
        assert cur.execute(WHO).fetchone() == ("anon", "none", "read committed", 2)
        cur.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        assert cur.execute(SWITCH, [token]).fetchone() == (token,)
        assert cur.execute(WHO).fetchone() == alice("serializable")
        cur.execute(INSERT, [ALICE, TITLE + protocol])
        assert cur.execute(WHO).fetchone() == alice("serializable")
        cur.execute("COMMIT")
        assert cur.execute(WHO).fetchone() == ("anon", "none", "read committed", 2)
    assert written(pg) == {protocol: ALICE}


def test_in_band_switch_after_begin_serializable_psycopg_pipeline(proxy: RunningProxy, pg: Any) -> None:
    token = token_for(ALICE)
    with psycopg.connect(proxy.dsn(token=""), autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            conn.execute(SWITCH, [token])
            who = conn.execute(WHO)
            conn.execute(INSERT, [ALICE, TITLE + "psycopg"])
            again = conn.execute(WHO)
            conn.execute("COMMIT")
        assert (who.fetchone(), again.fetchone()) == (alice("serializable"), alice("serializable"))
        assert conn.execute(WHO).fetchone() == ("anon", "none", "read committed", 2)  # the switch was local
    assert written(pg) == {"psycopg": ALICE}


def test_in_band_switch_after_begin_serializable_raw_pipeline_and_query_string(
    proxy: RunningProxy, pg: Any
) -> None:
    token = token_for(ALICE)
    conn = raw(proxy, "")
    try:
        conn.send(
            ext("BEGIN ISOLATION LEVEL SERIALIZABLE")
            + ext(SWITCH.replace("%s", "$1"), token)
            + ext(WHO)
            + ext(insert_sql("raw"))
            + ext(WHO)
            + ext("COMMIT")
            + fe.SYNC
        )
        replies = conn.until_ready()
        assert errors(replies) == [], replies
        assert data_rows(replies)[1:] == [alice_raw("serializable"), alice_raw("serializable")], replies
        assert statuses(replies) == ["I"]
        switch = f"select set_config('rlsproxy.jwt', '{token}', true)"
        # Simple protocol: BEGIN, then a query string the switch leads (a switch must lead its string).
        conn.send(
            fe.query("BEGIN ISOLATION LEVEL SERIALIZABLE")
            + fe.query(f"{switch}; {WHO}; {insert_sql('query')}")
        )
        replies = conn.until_ready(2)
        assert errors(replies) == [], replies
        assert data_rows(replies)[1:] == [alice_raw("serializable")] and statuses(replies) == ["T", "T"], (
            replies
        )
        conn.send(fe.query(f"{WHO}; COMMIT"))  # the rest of that transaction, in a later query
        replies = conn.until_ready()
        assert data_rows(replies) == [alice_raw("serializable")] and statuses(replies) == ["I"], replies
        conn.send(fe.query(WHO))
        assert data_rows(conn.until_ready()) == [["anon", "none", "read committed", "2"]]
    finally:
        conn.close()
    assert written(pg) == {"query": ALICE, "raw": ALICE}
