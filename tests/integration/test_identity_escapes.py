"""Attacks on the one promise: a client's statements run as its verified identity and no other.

Each test tries an escape through a protocol form a client controls and judges the outcome by facts
(current_user, auth.uid(), rows changed, checked as the superuser), not by whether an error came.
Where cheap, a control shows the same attack works against Postgres directly, so the test can fail.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD, BOB
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.backend import message, parse_fields
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy
from tests.support.rawpg import Message, RawConnection, data_rows, errors

WHO = "select current_user::text, coalesce(auth.uid()::text, 'none')"
SWITCH = "select set_config('rlsproxy.jwt', $1, true)"
# The payload the proxy's own switch statement reads: what an attacker would bind to it.
FORGED = json.dumps(
    {"role": "authenticated", "claims": json.dumps({"sub": BOB, "role": "authenticated"}), "value": ""}
)


def raw(proxy: RunningProxy, token: str) -> RawConnection:
    conn = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token}"}
    )
    assert conn.greeting[-1][0] == "Z", conn.greeting
    return conn


def who_in_same_batch() -> bytes:
    """Messages that report the identity, pipelined in the same transaction as what came before."""
    return fe.parse("", WHO) + fe.bind("", ()) + fe.execute()


def assert_still(conn: RawConnection, user: str, sub: str) -> None:
    conn.send(fe.query(WHO))
    assert data_rows(conn.until_ready()) == [[user, sub]]


# -- class 1: the in-band rewrite cannot be invoked with the client's own payload ---------------------


def test_sql_execute_of_a_named_in_band_statement_does_not_switch(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse("s1", SWITCH) + fe.SYNC)
    assert [t for t, _ in conn.until_ready()] == ["1", "Z"]
    conn.send(fe.query(f"EXECUTE s1('{FORGED}'); {WHO}"))
    replies = conn.until_ready()
    assert data_rows(replies) == [["authenticated", ALICE]] or errors(replies), replies
    assert ["authenticated", BOB] not in data_rows(replies)
    assert_still(conn, "authenticated", ALICE)


@pytest.mark.parametrize("name", ["s1", ""])
def test_binding_the_in_band_statement_with_a_forged_payload_does_not_switch(
    proxy: RunningProxy, name: str
) -> None:
    """After a real switch, the client binds its statement (and the unnamed statement) with the
    proxy's payload format: a Bind of its own name is verified as a token, nothing else exists."""
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse(name, SWITCH) + fe.bind(name, (token_for(ALICE),)) + fe.execute() + fe.SYNC)
    assert not errors(conn.until_ready())
    for target in (name, ""):
        conn.send(fe.bind(target, (FORGED,)) + fe.execute() + who_in_same_batch() + fe.SYNC)
        replies = conn.until_ready()
        assert ["authenticated", BOB] not in data_rows(replies), replies
        assert errors(replies), replies  # the forged payload is no token
    assert_still(conn, "authenticated", ALICE)


def test_the_simple_protocol_switch_leaves_no_statement_a_client_can_bind(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.query(f"select set_config('rlsproxy.jwt', '{token_for(ALICE)}', true)"))
    assert not errors(conn.until_ready())
    conn.send(fe.bind("", (FORGED,)) + fe.execute() + who_in_same_batch() + fe.SYNC)
    replies = conn.until_ready()
    assert ["authenticated", BOB] not in data_rows(replies)
    assert errors(replies)[0]["C"] == "26000", replies  # no unnamed statement: as after a Query directly
    assert_still(conn, "authenticated", ALICE)


@pytest.mark.parametrize(
    "attack",
    [
        f"EXECUTE rlsproxy_ib_1('{FORGED}')",
        f"EXECUTE rlsproxy_ib_query('{FORGED}')",
        f"EXPLAIN ANALYZE EXECUTE RLSPROXY_IB_1('{FORGED}')",
        f"CREATE TEMP TABLE t AS EXECUTE rlsproxy_ib_1('{FORGED}')",
    ],
)
def test_the_proxys_statements_cannot_be_executed_by_name(proxy: RunningProxy, attack: str) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse("s1", SWITCH) + fe.bind("s1", (token_for(ALICE),)) + fe.execute() + fe.SYNC)
    conn.until_ready()
    conn.send(fe.query(f"BEGIN; {attack}; {WHO}"))
    replies = conn.until_ready()
    assert errors(replies)[0]["C"] == "42501", replies
    assert ["authenticated", BOB] not in data_rows(replies)
    conn.send(fe.query("ROLLBACK"))
    conn.until_ready()
    assert_still(conn, "authenticated", ALICE)


def test_binding_a_reserved_name_is_refused(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse("s1", SWITCH) + fe.bind("s1", (token_for(ALICE),)) + fe.execute() + fe.SYNC)
    conn.until_ready()
    for name in ("rlsproxy_ib_1", "rlsproxy_ib_query", "rlsproxy_ctx"):
        conn.send(fe.bind(name, (FORGED,)) + fe.execute() + who_in_same_batch() + fe.SYNC)
        replies = conn.until_ready()
        assert errors(replies)[0]["C"] == "42501" and ["authenticated", BOB] not in data_rows(replies)
    assert_still(conn, "authenticated", ALICE)


def test_describe_and_close_of_an_in_band_statement_behave_as_directly(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse("s1", SWITCH) + message(codes.DESCRIBE, b"Ss1\0") + fe.SYNC)
    replies = conn.until_ready()
    assert [t for t, _ in replies] == ["1", "t", "T", "Z"]  # ParameterDescription, RowDescription
    assert b"set_config" in replies[2][1]
    conn.send(message(codes.CLOSE, b"Ss1\0") + fe.SYNC)
    assert [t for t, _ in conn.until_ready()] == ["3", "Z"]
    conn.send(fe.parse("s1", "select 1") + fe.bind("s1", ()) + fe.execute() + fe.SYNC)  # the name is free
    assert data_rows(conn.until_ready()) == [["1"]]


def test_a_name_in_use_cannot_be_prepared_again(proxy: RunningProxy) -> None:
    conn = raw(proxy, token_for(ALICE))
    conn.send(fe.parse("s1", SWITCH) + fe.SYNC)
    conn.until_ready()
    conn.send(fe.parse("s1", "select 1") + fe.SYNC)
    assert errors(conn.until_ready())[0]["C"] == "42P05"


# -- class 2: the guard reads texts as Postgres does: the settings that change that are pinned --------

SJIS_ATTACK = (
    b"SELECT E'\x95\x5c', set_config($$request.jwt.claims$$, $$"
    + json.dumps({"sub": BOB, "role": "authenticated"}).encode()
    + b"$$, true) --'"
)
SCS_ATTACK = (
    b"SELECT 'a\\'', set_config($$request.jwt.claims$$, $$"
    + json.dumps({"sub": BOB, "role": "authenticated"}).encode()
    + b"$$, true) --'"
)


def _claims_attack_works_directly(pg: Any, setup: str, attack: bytes) -> bool:
    """Control: the same bytes, sent to Postgres as the login role under `setup`, set the claims."""
    dsn = pg.dsn(user="authenticator", password=AUTHENTICATOR_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(setup)
        conn.execute("begin")
        conn.pgconn.exec_(attack)
        got = conn.pgconn.exec_(b"select current_setting('request.jwt.claims', true)")
        seen = got.get_value(0, 0) or b""
        conn.pgconn.exec_(b"rollback")
        return BOB.encode() in seen


@pytest.mark.parametrize(
    ("setup", "attack"),
    [
        ("set client_encoding = 'SJIS'", SJIS_ATTACK),
        ("set standard_conforming_strings = off", SCS_ATTACK),
    ],
)
def test_the_attacks_are_real(pg: Any, setup: str, attack: bytes) -> None:
    assert _claims_attack_works_directly(pg, setup, attack)


@pytest.mark.parametrize(
    "change",
    [
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'shift_jis'",
        "SET LOCAL client_encoding TO 'big5'",
        "select set_config('client_encoding', 'GBK', false)",
        "select pg_catalog.set_config('client_encoding', 'GB18030', true)",
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO false",
        "select set_config('standard_conforming_strings', 'off', false)",
        "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
        "PREPARE p AS SELECT set_config('client_encoding', 'SJIS', false); EXECUTE p",
        "DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$",
        "CREATE FUNCTION pg_temp.scs() RETURNS void LANGUAGE sql SET standard_conforming_strings = off "
        "AS 'SELECT 1'",
    ],
)
@pytest.mark.parametrize("form", ["one query", "pipelined queries", "extended pipeline"])
def test_settings_that_change_how_texts_are_read_cannot_be_changed(
    proxy: RunningProxy, change: str, form: str
) -> None:
    attack = SJIS_ATTACK if "scs" not in change and "standard" not in change else SCS_ATTACK
    conn = raw(proxy, token_for(ALICE))
    if form == "one query":
        conn.send(fe.query(f"BEGIN; {change}; ") + b"")  # refused as a whole
        replies = conn.until_ready()
        conn.send(message(codes.QUERY, attack + b"\0"))
        replies += conn.until_ready()
        conn.send(fe.query(WHO))
        replies += conn.until_ready()
    elif form == "pipelined queries":
        conn.send(fe.query("BEGIN") + fe.query(change) + message(codes.QUERY, attack + b"\0") + fe.query(WHO))
        replies = conn.until_ready(4)
    else:
        batch = fe.parse("", change) + fe.bind("", ()) + fe.execute()
        batch += message(codes.PARSE, b"\0" + attack + b"\0\0\0") + fe.bind("", ()) + fe.execute()
        conn.send(batch + who_in_same_batch() + fe.SYNC)
        replies = conn.until_ready()
    assert errors(replies)[0]["C"] == "0A000" or errors(replies)[0]["C"] == "42501", errors(replies)
    assert ["authenticated", BOB] not in data_rows(replies)
    assert [BOB] not in data_rows(replies)
    conn.send(fe.query("ROLLBACK"))
    conn.until_ready()
    assert_still(conn, "authenticated", ALICE)
    conn.send(fe.query("show client_encoding"))
    assert data_rows(conn.until_ready()) == [["UTF8"]]


@pytest.mark.parametrize(
    "options",
    [
        "-c client_encoding=SJIS",
        "-c client_encoding=windows-932",
        "-c standard_conforming_strings=off",
    ],
)
def test_startup_values_the_guard_cannot_read_under_are_refused(proxy: RunningProxy, options: str) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(proxy.dsn() + f" options='{options} -c rlsproxy.jwt={token_for(ALICE)}'")
    assert "rlsproxy" in str(caught.value) and (
        "client_encoding" in str(caught.value) or "standard" in str(caught.value)
    )


def test_client_encoding_in_the_startup_packet_is_refused(proxy: RunningProxy) -> None:
    conn = RawConnection(
        proxy.port,
        {
            "user": "app",
            "database": "app",
            "client_encoding": "SJIS",
            "options": f"-c rlsproxy.jwt={token_for(ALICE)}",
        },
    )
    fields = parse_fields(conn.greeting[-1][1])
    assert (conn.greeting[-1][0], fields["C"]) == ("E", "0A000") and "client_encoding" in fields["M"]


def test_a_safe_encoding_still_works(proxy: RunningProxy) -> None:
    with psycopg.connect(
        proxy.dsn(token=token_for(ALICE), client_encoding="LATIN1"), autocommit=True
    ) as conn:
        assert conn.execute("select 'é', auth.uid()::text").fetchone() == ("é", ALICE)


def test_a_pinned_setting_changed_behind_the_guards_back_ends_the_session(
    pg: Any, proxy: RunningProxy
) -> None:
    """Code the guard never sees (a function an administrator wrote) turns the setting off: the
    server reports it, the proxy ends the session and does not hand that server connection on."""
    pg.psql(
        "CREATE OR REPLACE FUNCTION public.rlsproxy_test_scs_off() RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$; "
        "GRANT EXECUTE ON FUNCTION public.rlsproxy_test_scs_off() TO authenticated"
    )
    try:
        conn = raw(proxy, token_for(ALICE))
        conn.send(fe.query("select pg_backend_pid()"))
        pid = data_rows(conn.until_ready())[0][0]
        conn.send(fe.query("select public.rlsproxy_test_scs_off()"))
        replies: list[Message] = []
        try:
            while True:
                replies.append(conn.read())
        except (ConnectionError, TimeoutError):
            pass
        fatal = [f for f in errors(replies) if f.get("S") == "FATAL"]
        assert fatal and fatal[0]["C"] == "0A000" and "standard_conforming_strings" in fatal[0]["M"], replies
        with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as other:
            assert other.execute("show standard_conforming_strings").fetchone() == ("on",)
            assert other.execute("select pg_backend_pid()::text").fetchone() != (pid,)
    finally:
        pg.psql("DROP FUNCTION IF EXISTS public.rlsproxy_test_scs_off()")


# -- pg_settings: an UPDATE there is set_config -------------------------------------------------------


def test_pg_settings_update_is_a_real_attack_directly(pg: Any) -> None:
    """(role and the claims are not in pg_settings; the settings that decide how texts are read are.)"""
    dsn = pg.dsn(user="authenticator", password=AUTHENTICATOR_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set role authenticated")
        conn.execute("update pg_settings set setting = 'off' where name = 'standard_conforming_strings'")
        assert conn.execute("show standard_conforming_strings").fetchone() == ("off",)


@pytest.mark.parametrize(
    "attack",
    [
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "update pg_catalog.pg_settings set setting = 'SJIS' where name = 'client_encoding'",
        "WITH x AS (UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' "
        "RETURNING 1) SELECT * FROM x",
        "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS "
        "$$ UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' $$",
    ],
)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pg_settings_cannot_be_written(proxy: RunningProxy, attack: str, protocol: str) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            if protocol == "simple":
                psycopg.ClientCursor(conn).execute(attack)
            else:
                conn.execute(attack, prepare=True)
        conn.rollback()
        assert conn.execute(WHO).fetchone() == ("authenticated", ALICE)
        assert conn.execute("show standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("show client_encoding").fetchone() == ("UTF8",)


# -- class 3: a procedure (or DO block) that COMMITs would run the rest of its body without context ---

_PROCEDURE = """
CREATE TABLE IF NOT EXISTS public.rlsproxy_call_log (who text, claims text);
GRANT INSERT, SELECT ON public.rlsproxy_call_log TO authenticated, authenticator;
CREATE OR REPLACE PROCEDURE public.rlsproxy_commit_then_write() LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.rlsproxy_call_log VALUES (current_user, current_setting('request.jwt.claims', true));
    COMMIT;
    INSERT INTO public.rlsproxy_call_log VALUES (current_user, current_setting('request.jwt.claims', true));
END $$;
GRANT EXECUTE ON PROCEDURE public.rlsproxy_commit_then_write() TO authenticated, authenticator;
TRUNCATE public.rlsproxy_call_log;
"""
_CLEAN = (
    "DROP PROCEDURE IF EXISTS public.rlsproxy_commit_then_write(); "
    "DROP TABLE IF EXISTS public.rlsproxy_call_log"
)


@pytest.fixture
def committing_procedure(pg: Any) -> Any:
    pg.psql(_PROCEDURE)
    try:
        yield lambda: pg.psql(
            "select count(*) || ' ' || coalesce(string_agg(who, ','), '') from public.rlsproxy_call_log"
        ).strip()
    finally:
        pg.psql(_CLEAN)


def test_a_committing_procedure_runs_the_rest_as_the_login_role_directly(
    pg: Any, committing_procedure: Any
) -> None:
    """Control: in one extended-protocol transaction after a context set as the proxy sets it, the
    body after the COMMIT runs as the login role with no claims (PostgreSQL 15); PostgreSQL 18
    makes a CALL in a pipeline atomic itself, and its COMMIT fails."""
    dsn = pg.dsn(user="authenticator", password=AUTHENTICATOR_PASSWORD)
    context = "select set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{}', true)"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, conn.pipeline():
            conn.execute(context)
            conn.execute("call public.rlsproxy_commit_then_write()")
        outcome = committing_procedure()
    except psycopg.errors.InvalidTransactionTermination:
        outcome = "atomic"
    attack = "2 authenticated,authenticator"
    expected = {15: attack, 18: "atomic"}.get(pg.version())
    assert outcome == expected or (expected is None and outcome in ("atomic", attack))


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize(
    "statement",
    [
        "CALL public.rlsproxy_commit_then_write()",
        "DO $$ BEGIN PERFORM 1; COMMIT; END $$",
        "DO $$ BEGIN CALL public.rlsproxy_commit_then_write(); END $$",
    ],
)
def test_transaction_control_runs_only_inside_a_block(
    proxy: RunningProxy, committing_procedure: Any, statement: str, protocol: str
) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="transaction block"):
            cur.execute(statement)
        assert committing_procedure() == "0"  # nothing of it ran
        conn.execute("BEGIN")
        # Inside a block Postgres makes the CALL atomic: its COMMIT fails and nothing is kept.
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            cur.execute(statement)
        conn.execute("ROLLBACK")
        assert committing_procedure() == "0"
        assert conn.execute(WHO).fetchone() == ("authenticated", ALICE)


def test_a_procedure_without_transaction_control_runs_in_a_block(proxy: RunningProxy, pg: Any) -> None:
    pg.psql(
        "CREATE OR REPLACE PROCEDURE public.rlsproxy_who(INOUT who text) LANGUAGE sql AS "
        "$$ SELECT current_user || ' ' || auth.uid() $$; "
        "GRANT EXECUTE ON PROCEDURE public.rlsproxy_who(text) TO authenticated"
    )
    try:
        with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:  # psycopg opens the block
            assert conn.execute("CALL public.rlsproxy_who(null)").fetchone() == (f"authenticated {ALICE}",)
        with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute("BEGIN; CALL public.rlsproxy_who(null); COMMIT")  # a block opened in the same text
            assert cur.nextset() and cur.fetchone() == (f"authenticated {ALICE}",)
    finally:
        pg.psql("DROP PROCEDURE IF EXISTS public.rlsproxy_who(text)")


# -- class 4: session state made under one identity does not survive a change of identity ------------

PRIVATE = "select count(*) from notes where not is_public"


def _switch(conn: psycopg.Connection[Any], user: str) -> None:
    conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token_for(user)])


@pytest.mark.parametrize(
    ("make", "read"),
    [
        ("DECLARE c CURSOR WITH HOLD FOR SELECT title FROM notes WHERE NOT is_public", "FETCH ALL FROM c"),
        ("CREATE TEMP TABLE t AS SELECT title FROM notes WHERE NOT is_public", "SELECT title FROM t"),
        ("LISTEN alice_channel", "SELECT 1"),
        ("SELECT pg_advisory_lock(42)", "SELECT 1"),
    ],
)
def test_state_held_from_one_identity_blocks_the_next(
    proxy: RunningProxy, pg: Any, make: str, read: str
) -> None:
    """App-pool model: one anonymous connection, an in-band switch per transaction. Alice's
    transaction leaves state behind; neither Bob's switch nor a transaction under the startup
    identity runs while it exists (they would FETCH Alice's private rows), and all goes on once
    DISCARD ALL removed it."""
    pg.psql("GRANT TEMPORARY ON DATABASE app TO authenticated")
    with psycopg.connect(proxy.dsn(token="")) as conn:
        _switch(conn, ALICE)
        conn.execute(make)
        conn.commit()
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="holds state"):
            _switch(conn, BOB)
        conn.rollback()
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="holds state"):
            conn.execute(read).fetchall()  # the startup identity (anon) is another identity too
        conn.rollback()
        conn.autocommit = True
        conn.execute("DISCARD ALL")  # runs without a context: removes it all
        conn.autocommit = False
        _switch(conn, BOB)
        assert conn.execute(WHO).fetchone() == ("authenticated", BOB)
        assert conn.execute(PRIVATE).fetchone() == (1,)  # Bob's own private note only
        conn.rollback()


def test_state_made_and_removed_within_the_transaction_is_no_obstacle(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token="")) as conn:
        _switch(conn, ALICE)
        conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT title FROM notes")
        conn.execute("CLOSE c")
        conn.commit()
        _switch(conn, BOB)
        assert conn.execute(WHO).fetchone() == ("authenticated", BOB)
        conn.rollback()
