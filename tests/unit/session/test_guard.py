"""The statement guard: every way to change identity is refused, ordinary SQL passes."""

from __future__ import annotations

import pytest

from rlsproxy.session.guard import ALLOW, Guard, Verdict, classify, is_reserved_statement_name
from rlsproxy.session.guard_fast import ENDS, NO_CONTEXT
from rlsproxy.session.guard_plpgsql import DynamicExecute, Unanalysable, embedded_sql
from rlsproxy.session.guard_support import json_depth

PRIV = "42501"
ACTIVE = "25001"

# (sql, rule, sqlstate)
REFUSED: list[tuple[str, str, str]] = [
    # -- SET / RESET ROLE ------------------------------------------------------------------------
    ("SET ROLE x", "set_role", PRIV),
    ("SET ROLE NONE", "set_role", PRIV),
    ("SET role TO DEFAULT", "set_role", PRIV),
    ("SET LOCAL ROLE x", "set_role", PRIV),
    ("SET SESSION ROLE x", "set_role", PRIV),
    ("RESET ROLE", "set_role", PRIV),
    ("SET \"role\" = 'x'", "set_role", PRIV),
    ("SET \"ROLE\" = 'x'", "set_role", PRIV),
    ("sEt RoLe 'x'", "set_role", PRIV),
    ("/* hello */ SET ROLE x", "set_role", PRIV),
    ("-- comment\nSET /* inline */ ROLE x -- trailing", "set_role", PRIV),
    ("select 1; set role x", "set_role", PRIV),
    ("SELECT 1; SELECT 2; RESET role;", "set_role", PRIV),
    # -- SESSION AUTHORIZATION -------------------------------------------------------------------
    ("SET SESSION AUTHORIZATION x", "session_authorization", PRIV),
    ("SET SESSION AUTHORIZATION DEFAULT", "session_authorization", PRIV),
    ("RESET SESSION AUTHORIZATION", "session_authorization", PRIV),
    ("SET LOCAL SESSION AUTHORIZATION 'x'", "session_authorization", PRIV),
    ("set session_authorization = x", "session_authorization", PRIV),
    # -- protected settings -----------------------------------------------------------------------
    ("SET LOCAL \"request.jwt.claims\" = '{}'", "protected_setting", PRIV),
    ("SET request.jwt.claims = '{}'", "protected_setting", PRIV),
    ("SET request.jwt.claim.sub = 'x'", "protected_setting", PRIV),
    ("SET \"Request.JWT\".Claims TO '{}'", "protected_setting", PRIV),
    ("RESET request.jwt.claims", "protected_setting", PRIV),
    ("SET request.jwt.claims FROM CURRENT", "protected_setting", PRIV),
    ("SET request.jwt.claims TO DEFAULT", "protected_setting", PRIV),
    ("SET rlsproxy.label = 'x'", "protected_setting", PRIV),
    ("SET rlsproxy.in_band = 'on'", "protected_setting", PRIV),
    # rlsproxy.jwt anywhere but in the exact in-band shapes (see test_in_band_shapes)
    ("select set_config('rlsproxy.jwt', 'x', true), 1", "protected_set_config", PRIV),
    ("select set_config('rlsproxy.jwt', 'x', true) from notes", "protected_set_config", PRIV),
    ("select set_config('rlsproxy.jwt', $2, true)", "protected_set_config", PRIV),
    ("select set_config('rlsproxy.jwt', 'x', $1)", "protected_set_config", PRIV),
    ("select set_config('rlsproxy.jwt', 'x', true) as t", "protected_set_config", PRIV),
    ("do $$ begin perform set_config('rlsproxy.jwt', 'x', true); end $$", "protected_set_config", PRIV),
    ("SET rlsproxy.jwt = 1", "protected_setting", PRIV),
    ("select 1; set local rlsproxy.jwt = 'x'", "in_band_in_batch", "0A000"),
    (
        "select set_config('rlsproxy.jwt', 'x', true); select 1; "
        "select set_config('rlsproxy.jwt', 'y', true)",
        "in_band_in_batch",
        "0A000",
    ),
    ("select set_config('rlsproxy.jwt', 'x', true); set role anon", "set_role", PRIV),
    ("set RLSPROXY.anything to 1", "protected_setting", PRIV),
    ("ALTER ROLE me SET role = 'x'", "protected_setting", PRIV),
    ("ALTER USER me SET request.jwt.claims = '{}'", "protected_setting", PRIV),
    ("ALTER ROLE me IN DATABASE d SET session_authorization = 'x'", "protected_setting", PRIV),
    ("ALTER DATABASE d SET request.jwt.claims = 'x'", "protected_setting", PRIV),
    ("ALTER DATABASE d RESET role", "protected_setting", PRIV),
    ("ALTER SYSTEM SET rlsproxy.x = 1", "protected_setting", PRIV),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = admin AS 'select 1'",
        "protected_setting",
        PRIV,
    ),
    (
        "CREATE PROCEDURE p() LANGUAGE sql SET request.jwt.claims FROM CURRENT AS 'select 1'",
        "protected_setting",
        PRIV,
    ),
    ("ALTER FUNCTION f() SET role = admin", "protected_setting", PRIV),
    ("ALTER PROCEDURE p() RESET session_authorization", "protected_setting", PRIV),
    # -- set_config with a protected literal name --------------------------------------------------
    ("select set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("select pg_catalog.set_config('role','x',false)", "protected_set_config", PRIV),
    ("SELECT SET_CONFIG('ROLE', 'x', true)", "protected_set_config", PRIV),
    ("select \"set_config\"('role', 'x', true)", "protected_set_config", PRIV),
    ("select set_config('session_authorization', 'x', true)", "protected_set_config", PRIV),
    ("select set_config('request.jwt.claims', '{}', true)", "protected_set_config", PRIV),
    ("select set_config('Request.Jwt.Claim.sub', 'x', true)", "protected_set_config", PRIV),
    ("select set_config('request.jwt', 'x', true)", "protected_set_config", PRIV),
    ("select set_config('rlsproxy.role', 'x', true)", "protected_set_config", PRIV),
    ("select set_config(' role ', 'x', true)", "protected_set_config", PRIV),
    ("select set_config(E'ro\\x6ce', 'x', true)", "protected_set_config", PRIV),
    ("select set_config(U&'r\\006fle', 'x', true)", "protected_set_config", PRIV),
    ("select set_config($$role$$, 'x', true)", "protected_set_config", PRIV),
    ("select set_config($tag$role$tag$, 'x', true)", "protected_set_config", PRIV),
    ("select * from notes where set_config('role', 'x', true) is not null", "protected_set_config", PRIV),
    ("select (select set_config('role', 'x', true))", "protected_set_config", PRIV),
    (
        "select * from notes where id in (select set_config('role','x',true)::int)",
        "protected_set_config",
        PRIV,
    ),
    ("with c as (select set_config('role', 'x', true)) select * from c", "protected_set_config", PRIV),
    (
        "with c as materialized (select 1) select set_config('role','x',true) from c",
        "protected_set_config",
        PRIV,
    ),
    ("insert into t values (set_config('role', 'x', true))", "protected_set_config", PRIV),
    ("values (1, set_config('role', 'x', true))", "protected_set_config", PRIV),
    ("update t set a = set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("delete from t where a = set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("select * from set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("select * from rows from (set_config('role', 'x', true))", "protected_set_config", PRIV),
    ("select * from t, lateral (select set_config('role', 'x', true)) s", "protected_set_config", PRIV),
    ("select coalesce(null, set_config('role', 'x', true))", "protected_set_config", PRIV),
    ("select case when true then set_config('role', 'x', true) end", "protected_set_config", PRIV),
    ("select lower(upper(set_config('role', 'x', true)))", "protected_set_config", PRIV),
    ("select count(*) filter (where set_config('role','x',true) = 'x') from t", "protected_set_config", PRIV),
    ("select 1 order by set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("explain analyze select set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("copy (select set_config('role', 'x', true)) to stdout", "protected_set_config", PRIV),
    ("prepare q as select set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("declare c cursor for select set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("create view v as select set_config('role', 'x', true)", "protected_set_config", PRIV),
    ("create table t (a text default set_config('role', 'x', true))", "protected_set_config", PRIV),
    ("create policy p on t using (set_config('role', 'x', true) = 'x')", "protected_set_config", PRIV),
    (
        "create rule r as on insert to t do also select set_config('role','x',true)",
        "protected_set_config",
        PRIV,
    ),
    (
        "select set_config(setting_name => 'role', new_value => 'x', is_local => true)",
        "protected_set_config",
        PRIV,
    ),
    ("select 1; select pg_catalog.set_config('ROLE', 'anon', true)", "protected_set_config", PRIV),
    # -- set_config with a name the guard cannot read ----------------------------------------------
    ("select set_config($1, 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config(name, setting, false) from t", "dynamic_set_config", PRIV),
    ("select set_config('ro' || 'le', 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config('role'::text, 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config(lower('ROLE'), 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config((select 'role'), 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config(NULL, 'x', true)", "dynamic_set_config", PRIV),
    ("select set_config(new_value => 'x', is_local => true)", "dynamic_set_config", PRIV),
    ("select set_config(variadic array['role', 'x'])", "dynamic_set_config", PRIV),
    ("select myschema.set_config(a, b, c) from t", "dynamic_set_config", PRIV),
    (
        "CREATE AGGREGATE agg(text, bool) (SFUNC = pg_catalog.set_config, STYPE = text, INITCOND = 'role')",
        "dynamic_set_config",
        PRIV,
    ),
    ("CREATE AGGREGATE agg(text, bool) (SFUNC = 'set_config', STYPE = text)", "dynamic_set_config", PRIV),
    # -- functions that run a query given as text ------------------------------------------------
    (
        "select query_to_xml('select set_config(''role'',''x'',true)', true, false, '')",
        "protected_set_config",
        PRIV,
    ),
    ("select query_to_xml($1, true, false, '')", "dynamic_sql_function", PRIV),
    ("select pg_catalog.query_to_xmlschema(q, true, false, '') from t", "dynamic_sql_function", PRIV),
    ("select ts_stat('select set_config(''role'',''x'',true)::tsvector')", "protected_set_config", PRIV),
    ("select ts_rewrite('a'::tsquery, $1)", "dynamic_sql_function", PRIV),
    (
        "select query_to_xml(query => 'select 1; set role x', nulls => true, "
        "tableforest => false, targetns => '')",
        "set_role",
        PRIV,
    ),
    (
        "CREATE OPERATOR === (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = ts_rewrite)",
        "dynamic_sql_function",
        PRIV,
    ),
    ("CREATE AGGREGATE a(text) (SFUNC = ts_rewrite, STYPE = tsquery)", "dynamic_sql_function", PRIV),
    # -- function bodies and DO blocks -----------------------------------------------------------
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ select set_config('role','x',true) $$",
        "protected_set_config",
        PRIV,
    ),
    ("CREATE OR REPLACE FUNCTION f() RETURNS void AS 'set role x' LANGUAGE sql", "set_role", PRIV),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE SQL AS $body$ select 1; SET "
        "LOCAL request.jwt.claims = '{}' $body$",
        "protected_setting",
        PRIV,
    ),
    ("CREATE FUNCTION f() RETURNS text RETURN set_config('role', 'x', true)", "protected_set_config", PRIV),
    (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC select 1; "
        "select set_config('role','x',true); END",
        "protected_set_config",
        PRIV,
    ),
    (
        "CREATE PROCEDURE p() LANGUAGE sql AS $$ select set_config($1, 'x', true) $$",
        "dynamic_set_config",
        PRIV,
    ),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE x'; END $$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    (
        "CREATE FUNCTION f(r text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
        "EXECUTE format('SET ROLE %I', r); END $$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    (
        "CREATE FUNCTION f() RETURNS SETOF int LANGUAGE plpgsql AS $$ BEGIN "
        "RETURN QUERY EXECUTE 'select 1'; END $$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    (
        "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    (
        "DO $$ DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'select 1'; END $$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    ("DO $$ BEGIN PERFORM set_config('role','x',true); END $$", "protected_set_config", PRIV),
    (
        "do language plpgsql $$ begin perform pg_catalog.set_config('role', 'x', true); end $$",
        "protected_set_config",
        PRIV,
    ),
    ("DO $$ DECLARE x text; BEGIN x := set_config('role','x',true); END $$", "protected_set_config", PRIV),
    ("DO $$ DECLARE x text; BEGIN x = set_config('role','x',true); END $$", "protected_set_config", PRIV),
    ("DO $$ DECLARE x text := set_config('role','x',true); BEGIN NULL; END $$", "protected_set_config", PRIV),
    (
        "DO $$ DECLARE a int[]; BEGIN a[set_config('role','x',true)::int] := 1; END $$",
        "protected_set_config",
        PRIV,
    ),
    (
        "DO $$ BEGIN IF set_config('role','x',true) = 'x' THEN NULL; END IF; END $$",
        "protected_set_config",
        PRIV,
    ),
    (
        "DO $$ BEGIN WHILE set_config('role','x',true) IS NULL LOOP END LOOP; END $$",
        "protected_set_config",
        PRIV,
    ),
    ("DO $$ BEGIN RAISE NOTICE '%', set_config('role','x',true); END $$", "protected_set_config", PRIV),
    (
        "DO $$ DECLARE x text; BEGIN SELECT set_config('role','x',true) INTO x; END $$",
        "protected_set_config",
        PRIV,
    ),
    ("DO $$ BEGIN SET ROLE x; END $$", "set_role", PRIV),
    ("DO $$ BEGIN SET LOCAL request.jwt.claims = '{}'; END $$", "protected_setting", PRIV),
    ("DO $$ BEGIN BEGIN NULL; EXCEPTION WHEN others THEN RESET ROLE; END; END $$", "set_role", PRIV),
    ("DO $$ DECLARE x text; BEGIN x := set_config($1, 'x', true); END $$", "dynamic_set_config", PRIV),
    ("select 1; DO $$ BEGIN PERFORM set_config('role','x',true); END $$", "protected_set_config", PRIV),
    (
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $f$ BEGIN RETURN "
        "set_config('role','x',true); END $f$",
        "protected_set_config",
        PRIV,
    ),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN DO $d$ BEGIN PERFORM "
        "set_config('request.jwt.claims','{}',true); END $d$; END $f$",
        "protected_set_config",
        PRIV,
    ),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN DO $d$ "
        "BEGIN EXECUTE 'x'; END $d$; END $f$",
        "plpgsql_dynamic_execute",
        PRIV,
    ),
    (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $f$ DO $d$ BEGIN SET ROLE x; END $d$ $f$",
        "set_role",
        PRIV,
    ),
    (
        "DO $$ BEGIN PERFORM 1 FROM t WHERE a = set_config('role','x',true); END $$",
        "protected_set_config",
        PRIV,
    ),
    ("DO $$ BEGIN PREPARE rlsproxy_x AS SELECT 1; END $$", "reserved_name", PRIV),
    ("DO $$ BEGIN DEALLOCATE ALL; END $$", "reserved_name", PRIV),
    # bodies that cannot be analysed
    ("DO $$ BEGIN selec 1; END $$", "unanalysable_body", PRIV),
    ("DO $$ BEGIN undeclared := 1; END $$", "unanalysable_body", PRIV),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'selec 1'", "unanalysable_body", PRIV),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plperl AS $$ spi_exec_query('set role x') $$",
        "unanalysable_body",
        PRIV,
    ),
    ("DO LANGUAGE plv8 $$ plv8.execute('set role x') $$", "unanalysable_body", PRIV),
    ("CREATE FUNCTION f() RETURNS int AS 'select 1'", "unanalysable_body", PRIV),
    # -- reserved statement names ----------------------------------------------------------------
    ("EXECUTE rlsproxy_ctx('a','b')", "reserved_name", PRIV),
    ("PREPARE rlsproxy_x AS SELECT 1", "reserved_name", PRIV),
    ("PREPARE RLSPROXY_X (int) AS SELECT $1", "reserved_name", PRIV),
    ("DEALLOCATE rlsproxy_ctx", "reserved_name", PRIV),
    ('DEALLOCATE PREPARE "rlsproxy_ctx"', "reserved_name", PRIV),
    ("select 1; execute rlsproxy_ctx", "reserved_name", PRIV),
    ("explain execute rlsproxy_ctx('a', 'b')", "reserved_name", PRIV),
    # -- statements that cannot run in a transaction block -----------------------------------------
    ("VACUUM", "needs_no_transaction", ACTIVE),
    ("vacuum notes", "needs_no_transaction", ACTIVE),
    ("VACUUM ANALYZE notes", "needs_no_transaction", ACTIVE),
    ("VACUUM (FULL, VERBOSE) notes", "needs_no_transaction", ACTIVE),
    ("CREATE DATABASE d", "needs_no_transaction", ACTIVE),
    ("DROP DATABASE d", "needs_no_transaction", ACTIVE),
    ("DROP DATABASE IF EXISTS d WITH (FORCE)", "needs_no_transaction", ACTIVE),
    ("ALTER DATABASE d SET TABLESPACE ts", "needs_no_transaction", ACTIVE),
    ("CREATE TABLESPACE ts LOCATION '/x'", "needs_no_transaction", ACTIVE),
    ("DROP TABLESPACE ts", "needs_no_transaction", ACTIVE),
    ("CREATE INDEX CONCURRENTLY ON notes (title)", "needs_no_transaction", ACTIVE),
    ("create unique index concurrently if not exists i on notes (id)", "needs_no_transaction", ACTIVE),
    ("DROP INDEX CONCURRENTLY i", "needs_no_transaction", ACTIVE),
    ("REINDEX TABLE CONCURRENTLY notes", "needs_no_transaction", ACTIVE),
    ("REINDEX (CONCURRENTLY) INDEX i", "needs_no_transaction", ACTIVE),
    ("REINDEX (CONCURRENTLY true) INDEX i", "needs_no_transaction", ACTIVE),
    ("REINDEX SCHEMA s", "needs_no_transaction", ACTIVE),
    ("REINDEX SYSTEM", "needs_no_transaction", ACTIVE),
    ("REINDEX DATABASE d", "needs_no_transaction", ACTIVE),
    ("ALTER SYSTEM SET work_mem = '4MB'", "needs_no_transaction", ACTIVE),
    ("ALTER SYSTEM RESET ALL", "needs_no_transaction", ACTIVE),
    ("CREATE SUBSCRIPTION s CONNECTION 'dbname=x' PUBLICATION p", "needs_no_transaction", ACTIVE),
    ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", "needs_no_transaction", ACTIVE),
    ("DROP SUBSCRIPTION s", "needs_no_transaction", ACTIVE),
    ("CLUSTER", "needs_no_transaction", ACTIVE),
    ("CLUSTER VERBOSE", "needs_no_transaction", ACTIVE),
    ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", "needs_no_transaction", ACTIVE),
    ("COMMIT PREPARED 'x'", "needs_no_transaction", ACTIVE),
    ("ROLLBACK PREPARED 'x'", "needs_no_transaction", ACTIVE),
    ("select 1; vacuum", "needs_no_transaction", ACTIVE),
    # -- statements after the end of the transaction the context belongs to --------------------
    # -- batches with statements that must come alone --------------------------------------------
    ("select 1; DISCARD ALL", "discard_all_in_batch", ACTIVE),
    ("DISCARD ALL; select 1", "discard_all_in_batch", ACTIVE),
    ("DEALLOCATE ALL; DISCARD ALL", "deallocate_all_in_batch", ACTIVE),
    ("select 1; DEALLOCATE ALL", "deallocate_all_in_batch", ACTIVE),
    ("DEALLOCATE PREPARE ALL; select 1", "deallocate_all_in_batch", ACTIVE),
]

ALLOWED: list[str] = [
    "begin; select 1; commit",
    "begin; savepoint a; select 1; rollback to savepoint a; release a; commit",
    "select 1; rollback",
    "",
    "   ",
    ";",
    "-- only a comment",
    "/* only a comment */",
    "select 1",
    "SELECT * FROM notes WHERE id = $1",
    "select * from notes where title = 'set role x'",
    "select 'set_config' as name, 'role' as r",
    "select current_setting('request.jwt.claims', true)",
    "select current_setting('role')",
    "select auth.uid()",
    "insert into notes (user_id, title) values ($1, $2) returning id",
    "update notes set title = 'x' where id = 1",
    "delete from notes where id = 1",
    "copy notes from stdin",
    "copy notes to stdout with (format csv)",
    "copy (select * from notes) to stdout",
    "with x as (select 1) select * from x",
    "SET search_path TO app, public",
    "SET LOCAL statement_timeout = '5s'",
    "SET application_name = 'x'",
    "SET TIME ZONE 'UTC'",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET request.other = 'x'",
    "SET request.jwtx = 'x'",
    "SET rlsproxyx.y = 'x'",
    "RESET search_path",
    "SHOW role",
    "select set_config('search_path', 'x', false)",
    "select set_config('app.tenant', 'x', true)",
    "select pg_catalog.set_config('statement_timeout', '5s', true)",
    "select set_config('request.jwtx', 'x', true)",
    "DO $$ BEGIN RAISE NOTICE 'hello'; END $$",
    "DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM notes; PERFORM pg_sleep(0); END $$",
    "DO $$ BEGIN PERFORM set_config('app.tenant', 'x', true); END $$",
    "CREATE FUNCTION add(a integer, b integer) RETURNS integer LANGUAGE "
    "plpgsql AS $$ BEGIN RETURN a + b; END $$",
    "CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS "
    "$f$ DECLARE r record; total int := 0; "
    "BEGIN FOR r IN SELECT * FROM t LOOP total := total + 1; END LOOP; "
    "IF a > 1 THEN RETURN a; ELSIF a < 0 THEN RETURN -a; END IF; RETURN total; END $f$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql IMMUTABLE RETURN 1",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
    "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.updated_at := now(); RETURN NEW; END $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS $$ return 1 $$",
    "CREATE FUNCTION f(int) RETURNS int LANGUAGE c AS 'mylib', 'f'",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql SET search_path = app AS 'select 1'",
    "CREATE AGGREGATE mysum(int) (SFUNC = int4pl, STYPE = int)",
    "BEGIN; SELECT 1; COMMIT",
    "begin isolation level repeatable read; select 1; rollback",
    "ANALYZE notes",
    "ANALYZE",
    "REINDEX TABLE notes",
    "REINDEX (CONCURRENTLY false) TABLE notes",
    "CLUSTER notes USING notes_pkey",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
    "CREATE INDEX ON notes (title)",
    "DROP INDEX i",
    "ALTER TABLE p DETACH PARTITION p1",
    "ALTER DATABASE d SET search_path = app",
    "ALTER ROLE me SET search_path = app",
    "PREPARE q AS SELECT 1",
    "EXECUTE q",
    "DEALLOCATE q",
    "DISCARD PLANS",
    "DISCARD TEMP",
    "select query_to_xml('select * from notes', true, false, '')",
    "select ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)",
    "LISTEN chan; NOTIFY chan, 'x'",
    "select 'é' || 'ü'",
]


@pytest.mark.parametrize(("sql", "rule", "code"), REFUSED)
def test_refused(sql: str, rule: str, code: str) -> None:
    verdict = classify(sql)
    assert (verdict.action, verdict.rule, verdict.sqlstate) == ("refuse", rule, code), verdict
    assert verdict.message is not None and verdict.message.startswith("rlsproxy: ")


def test_an_in_band_switch_may_lead_a_query_string() -> None:
    """pgx's simple protocol sends a batch as one string: the switch applies to what follows."""
    verdict = classify(
        "select set_config('rlsproxy.jwt', 'tok', true); select * from notes; commit; select 1"
    )
    assert verdict.action == "in_band" and verdict.in_band is not None and verdict.in_band.literal == "tok"
    assert (verdict.leading, verdict.reapply) == (1, (3,))


@pytest.mark.parametrize(
    ("sql", "leading", "reapply", "flow"),
    [
        ("select 1", 0, (), 0),
        ("begin isolation level serializable; select 1", 1, (), 0),
        ("BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET LOCAL x.y = 1; select 1", 3, (), 0),
        ("begin; select 1; commit; select * from notes", 1, (3,), 0),
        ("select 1; COMMIT; select 2", 0, (2,), 0),
        ("begin; rollback; begin; select 1", 3, (), 0),
        ("begin; end; select 1", 2, (), 0),
        ("begin; commit and chain; select 1", 2, (), 0),
        ("begin; savepoint a; select 1; rollback to savepoint a; release a; commit", 1, (4,), ENDS),
        ("select 1; reset all", 0, (), ENDS),
        ("begin; commit", 2, (), ENDS),
        ("begin", 1, (), NO_CONTEXT),
        ("rollback to savepoint a", 1, (), NO_CONTEXT | ENDS),
        ("commit and chain", 1, (), NO_CONTEXT | ENDS),
        ("reset all", 1, (), NO_CONTEXT | ENDS),
        ("savepoint a", 0, (), 0),
        ("/* why */ COMMIT", 1, (), NO_CONTEXT | ENDS),
        ("-- a comment\n  Begin", 1, (), NO_CONTEXT),
    ],
)
def test_where_the_context_goes(sql: str, leading: int, reapply: tuple[int, ...], flow: int) -> None:
    """After statements that need no context (BEGIN ISOLATION LEVEL must come before any snapshot),
    and again before the first statement that needs it after one that ended it."""
    verdict = classify(sql)
    assert (verdict.leading, verdict.reapply, verdict.flow) == (leading, reapply, flow), verdict
    assert classify(sql, fast=False) == verdict
    if verdict.action == "allow" and ";" not in sql:
        from rlsproxy.session.guard_fast import plain_flow

        assert plain_flow(sql) == verdict.flow & (NO_CONTEXT | ENDS)  # the relay's cheap reading agrees


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    assert classify(sql).action == "allow"


def test_messages_name_what_and_why() -> None:
    verdict = classify("SET ROLE x")
    assert verdict.message is not None and "SET ROLE" in verdict.message and "token" in verdict.message
    verdict = classify("VACUUM")
    assert verdict.message is not None and verdict.message.startswith("rlsproxy: VACUUM cannot run through")
    assert verdict.hint == "run maintenance commands directly against PostgreSQL as an administrator"
    verdict = classify("CREATE INDEX CONCURRENTLY ON notes (title)")
    assert verdict.message is not None and "CREATE INDEX CONCURRENTLY" in verdict.message
    verdict = classify("select set_config('request.jwt.claims', '{}', true)")
    assert verdict.message is not None and '"request.jwt.claims"' in verdict.message


@pytest.mark.parametrize(
    "sql", ["DISCARD ALL", "discard all;", "/* x */ DISCARD ALL -- y", "  DISCARD ALL ;  "]
)
def test_discard_all_alone(sql: str) -> None:
    assert classify(sql).action == "discard_all"


@pytest.mark.parametrize("sql", ["DEALLOCATE ALL", "DEALLOCATE PREPARE ALL", "deallocate all;"])
def test_deallocate_all_alone(sql: str) -> None:
    assert classify(sql).action == "deallocate_all"


# Positions verified against PostgreSQL's own ErrorResponse P field for the same texts.
@pytest.mark.parametrize(
    ("sql", "message", "position"),
    [
        ("select * frm t", 'syntax error at or near "frm"', 10),
        ("select 'éééé' frm t", 'syntax error at or near "t"', 19),
        ('select "日本" frm x', 'syntax error at or near "x"', 17),
        ("select 'ü😀' x y", 'syntax error at or near "y"', 15),
        ("/* é */ sel", 'syntax error at or near "sel"', 9),
        ("select 1; selec 2", 'syntax error at or near "selec"', 11),
        ("select * from", "syntax error at end of input", 14),
        ("select * from   ", "syntax error at end of input", 17),
        ("select 'é' + ", "syntax error at end of input", 14),
        ("select 'abc", 'unterminated quoted string at or near "\'abc"', 8),
        (")", 'syntax error at or near ")"', 1),
    ],
)
def test_syntax_error_position(sql: str, message: str, position: int) -> None:
    assert classify(sql, fast=False) == Verdict("refuse", "syntax", "42601", message, None, position)


def test_refuses_text_with_nul() -> None:
    verdict = classify("select 1\x00; set role x")
    assert (verdict.action, verdict.rule, verdict.position) == ("refuse", "syntax", 9)


def test_refuses_unencodable_text() -> None:
    assert classify("select '\udcff'").rule == "syntax"


def test_refuses_too_deep_instead_of_crashing() -> None:
    # pglast's conversion to Python objects would overflow the C stack on this tree.
    verdict = classify("select 1" + " is null" * 30_000, fast=False)
    assert (verdict.action, verdict.rule, verdict.sqlstate) == ("refuse", "too_complex", "54001")
    assert classify("select " + "1+" * 1_000 + "1") == ALLOW
    assert classify("insert into t values " + ",".join(f"({i}, 'x')" for i in range(3_000))) == ALLOW


def test_json_depth() -> None:
    assert json_depth("") == 0
    assert json_depth("[[[]]]") == 3
    assert json_depth('{"a": "x{\\"[", "b": [1, {"c": "\\\\"}]}') == 3


def test_reserved_statement_names() -> None:
    assert is_reserved_statement_name("rlsproxy_ctx")
    assert is_reserved_statement_name("RLSPROXY_x")
    assert not is_reserved_statement_name("")
    assert not is_reserved_statement_name("rlsproxy")
    assert not is_reserved_statement_name("my_rlsproxy_x")


def test_cache_counts_hits_and_misses() -> None:
    guard = Guard(cache_size=10)
    first = guard.check("SELECT 1")
    assert (guard.hits, guard.misses) == (0, 1)
    assert guard.check("SELECT 1") is first
    assert guard.check("SELECT 1") is first
    assert (guard.hits, guard.misses) == (2, 1)
    guard.check("select 1")  # exact text: another entry
    assert (guard.hits, guard.misses) == (2, 2)


def test_cache_is_bounded() -> None:
    guard = Guard(cache_size=3)
    for i in range(10):
        guard.check(f"select {i}")
    assert guard.misses == 10
    guard.check("select 9")
    assert guard.hits == 1
    guard.check("select 0")  # evicted long ago
    assert guard.misses == 11


def test_cache_disabled() -> None:
    guard = Guard(cache_size=0)
    assert guard.check("set role x").rule == "set_role"
    assert guard.check("set role x").rule == "set_role"
    assert (guard.hits, guard.misses) == (0, 2)


def test_embedded_sql_of_plpgsql() -> None:
    texts = embedded_sql(
        "CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int := 1; "
        "BEGIN x := a + 1; PERFORM pg_sleep(0); UPDATE t SET b = x; RETURN x + 0; END $$"
    )
    assert texts == [
        "SELECT 1",  # the DECLARE default
        "SELECT x ",  # the assignment's target (it may carry subscripts) ...
        "SELECT  a + 1",  # ... and its value
        "SELECT pg_sleep(0)",
        "UPDATE t SET b = x",
        "SELECT x + 0",
    ]
    with pytest.raises(DynamicExecute):
        embedded_sql("DO $$ BEGIN EXECUTE 'select 1'; END $$")
    with pytest.raises(Unanalysable):
        embedded_sql("DO $$ BEGIN nonsense; END $$")


@pytest.mark.parametrize(
    "sql",
    [
        "RESET ALL",
        "reset all;",
        # asyncpg's pool reset, sent on every release
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    ],
)
def test_reset_all_is_allowed_and_flagged(sql: str) -> None:
    assert classify(sql).action == "reset_all"


def test_reset_of_one_setting_is_plain_allow() -> None:
    assert classify("RESET application_name").action == "allow"


@pytest.mark.parametrize(
    ("sql", "form", "local", "literal", "param"),
    [
        ("SELECT set_config('rlsproxy.jwt', $1, true)", "set_config", True, None, 1),
        ("select pg_catalog.set_config('RLSPROXY.JWT', $1::text, false)", "set_config", False, None, 1),
        ("select set_config('rlsproxy.jwt', 'tok', 't')", "set_config", True, "tok", None),
        ("SET LOCAL rlsproxy.jwt = 'tok'", "set", True, "tok", None),
        ("set rlsproxy.jwt to 'tok'", "set", False, "tok", None),
        ("RESET rlsproxy.jwt", "reset", False, None, None),
        ("SET LOCAL rlsproxy.jwt TO DEFAULT", "reset", True, None, None),
    ],
)
def test_in_band_shapes(sql: str, form: str, local: bool, literal: str | None, param: int | None) -> None:
    verdict = classify(sql)
    assert verdict.action == "in_band"
    assert verdict.in_band is not None
    assert (verdict.in_band.form, verdict.in_band.local) == (form, local)
    assert (verdict.in_band.literal, verdict.in_band.param) == (literal, param)


FAST_ALLOWED = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48521;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4049 WHERE aid = 590213;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
    "insert into notes (title) values ('x') on conflict (id) do update set title = excluded.title",
    "with x as (delete from notes returning *) select count(*) from x",
    "BEGIN;",
    "END;",
    "commit",
    "rollback to savepoint a",
    "select 'set_config(''role'', ''x'', true)'",  # a string, not a call
]


@pytest.mark.parametrize("sql", FAST_ALLOWED)
def test_fast_path_allows_plain_dml(sql: str) -> None:
    from rlsproxy.session.guard_fast import plainly_allowed

    assert plainly_allowed(sql)
    assert classify(sql, fast=False) == classify(sql)  # and the full parse agrees, flow included
    assert classify(sql).action == "allow"


@pytest.mark.parametrize("sql", [sql for sql, _, _ in REFUSED])
def test_fast_path_never_allows_what_the_guard_refuses(sql: str) -> None:
    from rlsproxy.session.guard_fast import plainly_allowed

    assert not plainly_allowed(sql)
    assert classify(sql) == classify(sql, fast=False)


@pytest.mark.parametrize(
    "sql",
    [
        "select set_config('role', 'x', true)",
        "select \"SET_CONFIG\"('role', 'x', true)",
        "select pg_catalog.set_config('role', 'x', true)",
        "select query_to_xml('set role x', true, true, '')",
        "select U&\"set\\005fconfig\"('role', 'x', true)",
        "select 1; select 2",
        "COMMIT PREPARED 'x'",
        "RESET ALL",
        "DISCARD ALL",
    ],
)
def test_fast_path_defers_to_the_full_parse(sql: str) -> None:
    from rlsproxy.session.guard_fast import plainly_allowed

    assert not plainly_allowed(sql)
