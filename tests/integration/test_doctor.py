"""`rlsproxy doctor` against real databases on the shared test cluster.

Three databases of their own (the cluster is shared, so nothing in `app` is touched):
  doctor_bad   one of each mistake; the exact findings are asserted
  doctor_good  the same features done right; no finding at all
  doctor_demo  examples/schema.sql + seed.sql, as `make demo` installs them into `app`
               (a fresh copy, because other tests add tables to `app`)
Roles are cluster-wide, so they carry a `doc_` prefix; nothing shared is dropped or altered.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import Config, RolesConfig, ServiceConfig, UpstreamConfig
from rlsproxy.doctor import CHECK_IDS, Finding, checks_tables, run_doctor, to_text
from rlsproxy.doctor.base import Context
from rlsproxy.doctor.checks import examine
from rlsproxy.doctor.cli import main
from rlsproxy.doctor.exprs import call_name, identity_changes, parse_expr, per_row_calls, uid_comparisons

ROOT = Path(__file__).resolve().parents[2]
AUTH_SQL = (ROOT / "rlsproxy" / "sql" / "auth.sql").read_text()

BAD_ROLES = """
CREATE ROLE doc_anon NOLOGIN;
CREATE ROLE doc_authenticated NOLOGIN;
CREATE ROLE doc_reporter NOLOGIN BYPASSRLS;            -- an end-user role that bypasses RLS
CREATE ROLE doc_admin NOLOGIN BYPASSRLS;
CREATE ROLE doc_staff NOLOGIN;
GRANT doc_admin TO doc_staff;
GRANT doc_staff TO doc_authenticated;                  -- end user -> staff -> BYPASSRLS admin
CREATE ROLE doc_service_role NOLOGIN BYPASSRLS;
CREATE ROLE doc_owner LOGIN;                           -- a login role owning an exposed table
CREATE ROLE doc_authenticator LOGIN INHERIT BYPASSRLS; -- should be NOINHERIT NOBYPASSRLS
GRANT doc_anon, doc_authenticated, doc_service_role TO doc_authenticator;  -- not doc_reporter
"""

BAD_SCHEMA = """
CREATE SCHEMA util;                                    -- not exposed: no end-user USAGE

CREATE TABLE public.open_notes (id int PRIMARY KEY, user_id uuid, body text);
GRANT SELECT ON public.open_notes TO doc_anon;
GRANT SELECT ON public.open_notes TO doc_authenticator;

CREATE TABLE public.locked (id int PRIMARY KEY);
ALTER TABLE public.locked ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON public.locked TO doc_authenticated;

CREATE TABLE public.owned_by_login (id int PRIMARY KEY, user_id uuid);
CREATE INDEX ON public.owned_by_login (user_id);
ALTER TABLE public.owned_by_login ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own rows" ON public.owned_by_login FOR SELECT TO doc_authenticated
    USING ((SELECT auth.uid()) = user_id);
ALTER TABLE public.owned_by_login OWNER TO doc_owner;

CREATE TABLE public.posts (id int PRIMARY KEY, author_id uuid, title text, published bool);
ALTER TABLE public.posts ENABLE ROW LEVEL SECURITY;
CREATE POLICY "edit without check" ON public.posts FOR UPDATE TO doc_authenticated
    USING ((SELECT auth.uid()) = author_id);
CREATE POLICY "edit loose check" ON public.posts FOR UPDATE TO doc_authenticated
    USING ((SELECT auth.uid()) = author_id) WITH CHECK (title <> '');
CREATE POLICY "anyone deletes" ON public.posts FOR DELETE TO doc_anon USING (true);
CREATE POLICY "public read" ON public.posts FOR SELECT USING (true);
CREATE POLICY "slow read" ON public.posts FOR SELECT TO doc_authenticated USING (auth.uid() = author_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.posts TO doc_authenticated;

CREATE VIEW public.post_view AS SELECT id, title FROM public.posts;
GRANT SELECT ON public.post_view TO doc_anon;

CREATE FUNCTION public.admin_lookup() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT count(*) FROM public.posts';

CREATE FUNCTION util.become(r text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('role', r, true); END $$;
CREATE FUNCTION util.become_sql() RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('request.jwt.claims', '{"sub": "x"}', true) $$;
CREATE FUNCTION util.set_path() RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('search_path', 'public', true) $$;
CREATE FUNCTION util.as_alice() RETURNS uuid LANGUAGE sql
    SET request.jwt.claims = '{"sub": "11111111-1111-1111-1111-111111111111"}'
    AS $$ SELECT auth.uid() $$;

CREATE TABLE public.events (id int, user_id uuid, kind text) PARTITION BY LIST (kind);
CREATE INDEX ON public.events (user_id);
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own events" ON public.events FOR SELECT TO doc_authenticated
    USING ((SELECT auth.uid()) = user_id);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES IN ('a');

CREATE TABLE public.audited (id int PRIMARY KEY, user_id uuid);
CREATE INDEX ON public.audited (user_id);
ALTER TABLE public.audited ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own audited" ON public.audited FOR SELECT TO doc_authenticated
    USING ((SELECT auth.uid()) = user_id);
CREATE FUNCTION util.audit_fn() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER audit BEFORE INSERT ON public.audited FOR EACH ROW EXECUTE FUNCTION util.audit_fn();

CREATE TABLE util.login_owned (id int);
ALTER TABLE util.login_owned OWNER TO doc_authenticator;

CREATE EXTENSION dblink;
CREATE FOREIGN DATA WRAPPER doc_fdw;
CREATE SERVER doc_server FOREIGN DATA WRAPPER doc_fdw;
GRANT USAGE ON FOREIGN SERVER doc_server TO doc_authenticated;
"""

GOOD_ROLES = """
CREATE ROLE doc_good_anon NOLOGIN;
CREATE ROLE doc_good_authenticated NOLOGIN;
CREATE ROLE doc_good_service_role NOLOGIN BYPASSRLS;
CREATE ROLE doc_good_owner NOLOGIN;                    -- owns tables; nobody logs in as it
CREATE ROLE doc_good_migrator LOGIN;                   -- a login owner, with FORCE on its tables
CREATE ROLE doc_good_authenticator LOGIN NOINHERIT;
CREATE ROLE doc_good_service LOGIN NOINHERIT;
GRANT doc_good_anon, doc_good_authenticated TO doc_good_authenticator;
GRANT doc_good_service_role TO doc_good_service;
CREATE ROLE doc_super LOGIN SUPERUSER NOINHERIT;       -- only for the superuser-login scenario
"""

GOOD_SCHEMA = """
GRANT USAGE ON SCHEMA auth TO doc_good_anon, doc_good_authenticated;
CREATE SCHEMA util;

CREATE TABLE public.notes (id int PRIMARY KEY, user_id uuid, title text, is_public bool);
CREATE INDEX ON public.notes (user_id);
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY "read public" ON public.notes FOR SELECT USING (is_public);
CREATE POLICY "read own" ON public.notes FOR SELECT TO doc_good_authenticated
    USING ((SELECT auth.uid()) = user_id);
CREATE POLICY "create own" ON public.notes FOR INSERT TO doc_good_authenticated
    WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "update own" ON public.notes FOR UPDATE TO doc_good_authenticated
    USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "delete own" ON public.notes FOR DELETE TO doc_good_authenticated
    USING ((SELECT auth.uid()) = user_id);
GRANT SELECT ON public.notes TO doc_good_anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO doc_good_authenticated;
ALTER TABLE public.notes OWNER TO doc_good_owner;      -- NOLOGIN owner: FORCE not needed

CREATE TABLE public.internal (id int PRIMARY KEY);     -- RLS, no policy, but no end-user grant
ALTER TABLE public.internal ENABLE ROW LEVEL SECURITY;
CREATE TABLE public.lookup (code text PRIMARY KEY);    -- no RLS, and no end-user grant

CREATE TABLE public.forced (id int PRIMARY KEY, user_id uuid);
CREATE INDEX ON public.forced (user_id);
ALTER TABLE public.forced ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.forced FORCE ROW LEVEL SECURITY;
CREATE POLICY "own" ON public.forced FOR ALL TO doc_good_authenticated
    USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));
GRANT SELECT, INSERT ON public.forced TO doc_good_authenticated;
ALTER TABLE public.forced OWNER TO doc_good_migrator;

CREATE VIEW public.note_titles WITH (security_invoker = true) AS SELECT id, title FROM public.notes;
GRANT SELECT ON public.note_titles TO doc_good_anon;

CREATE FUNCTION public.note_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT count(*) FROM public.notes';
REVOKE EXECUTE ON FUNCTION public.note_count() FROM PUBLIC;
CREATE FUNCTION util.set_path() RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('search_path', 'public', true) $$;
CREATE FUNCTION util.touch() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.touched', 'yes', true); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT ON public.notes FOR EACH ROW EXECUTE FUNCTION util.touch();

CREATE TABLE public.events (id int, user_id uuid, kind text) PARTITION BY LIST (kind);
CREATE INDEX ON public.events (user_id);
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own events" ON public.events FOR SELECT TO doc_good_authenticated
    USING ((SELECT auth.uid()) = user_id);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES IN ('a');
ALTER TABLE public.events_a ENABLE ROW LEVEL SECURITY;  -- no policy: closed to direct queries
GRANT SELECT ON public.events, public.events_a TO doc_good_authenticated;

-- Close the escape hatch in this database only (function privileges are per database).
REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO doc_good_authenticator;
"""


def _service(role: str) -> tuple[ServiceConfig, ...]:
    return (ServiceConfig(name="sync", match=(("sub", "svc:sync"),), roles=(role,), labels=("job:*",)),)


BAD_CONFIG = Config(
    upstream=UpstreamConfig(user="doc_authenticator"),
    roles=RolesConfig(
        allowed=("doc_anon", "doc_authenticated", "doc_reporter", "doc_ghost"),
        default="doc_authenticated",
        anonymous="doc_anon",
    ),
    services=_service("doc_service_role"),
)
GOOD_CONFIG = Config(
    upstream=UpstreamConfig(user="doc_good_authenticator", service_user="doc_good_service"),
    roles=RolesConfig(
        allowed=("doc_good_anon", "doc_good_authenticated"),
        default="doc_good_authenticated",
        anonymous="doc_good_anon",
    ),
    services=_service("doc_good_service_role"),
)
DEMO_CONFIG = Config(
    upstream=UpstreamConfig(user="authenticator", service_user="rlsproxy_service"),
    roles=RolesConfig(allowed=("anon", "authenticated"), default="authenticated", anonymous="anon"),
    services=_service("service_role"),
)

SET_CONFIG = "function pg_catalog.set_config(text, text, boolean)"


def _expected_bad(server_version: int) -> list[tuple[str, str, str]]:
    login = "role doc_authenticator"
    expected = [
        ("error", "end-user-role-problem", "role doc_authenticated"),  # member of doc_admin via doc_staff
        ("error", "end-user-role-problem", "role doc_ghost"),  # missing
        ("error", "end-user-role-problem", "role doc_reporter"),  # BYPASSRLS
        ("error", "login-role-not-member", login),  # not a member of doc_reporter
        ("error", "login-role-privileged", login),  # BYPASSRLS
        ("error", "login-role-privileged", login),  # INHERIT
        ("error", "login-role-privileged", login),  # owns util.login_owned
        ("error", "login-role-privileged", login),  # SELECT on public.open_notes
        ("error", "owner-not-forced", "public.owned_by_login"),
        ("error", "partition-without-rls", "public.events_a"),
        ("error", "rls-disabled", "public.open_notes"),
        ("error", "security-definer-exposed", "function public.admin_lookup()"),
        ("error", "set-config-function", "function util.as_alice()"),  # SET clause of the function
        ("error", "set-config-function", "function util.become(r text)"),
        ("error", "set-config-function", "function util.become_sql()"),
        ("error", "using-true-write", 'policy "anyone deletes" on public.posts'),
        ("error" if server_version >= 150000 else "info", "view-not-invoker", "public.post_view"),
        ("warning", "insert-without-policy", "public.posts"),
        ("warning", "policy-column-unindexed", "public.posts.author_id"),
        ("warning", "rls-no-policy", "public.locked"),
        ("warning", "service-login-shared", login),
        ("warning", "trigger-security-definer", 'trigger "audit" on public.audited'),
        ("warning", "update-without-check", 'policy "edit loose check" on public.posts'),
        ("warning", "update-without-check", 'policy "edit without check" on public.posts'),
        ("info", "escape-hatch", "foreign server doc_server"),
        ("info", "escape-hatch", SET_CONFIG),
        ("info", "escape-hatch", "function public.dblink"),
        ("info", "escape-hatch", "function public.dblink_connect"),
        ("info", "escape-hatch", "function public.dblink_exec"),
        ("info", "per-row-uid", 'policy "slow read" on public.posts'),
        ("info", "using-true-select", 'policy "public read" on public.posts'),
    ]
    if server_version >= 160000:  # membership granted WITH INHERIT TRUE (per-grant inheritance)
        expected.append(("error", "login-role-privileged", login))
    return sorted(expected)


def _triples(findings: Sequence[Finding]) -> list[tuple[str, str, str]]:
    return sorted((f.severity, f.check, f.object) for f in findings)


def _doctor(dsn: str, config: Config, schemas: Sequence[str] | None = None) -> list[Finding]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run_doctor(conn, config, schemas)


def _create_db(pg: Any, name: str, sql: str) -> str:
    pg.psql(f"CREATE DATABASE {name}", dbname="postgres")
    pg.psql(sql, dbname=name)
    return str(pg.dsn(dbname=name))


@pytest.fixture(scope="module")
def server_version(pg: Any) -> int:
    with psycopg.connect(pg.dsn(dbname="postgres")) as conn:
        return int(conn.info.server_version)


@pytest.fixture(scope="module")
def bad_dsn(pg: Any) -> str:
    pg.psql(BAD_ROLES, dbname="postgres")
    return _create_db(pg, "doctor_bad", AUTH_SQL + BAD_SCHEMA)


@pytest.fixture(scope="module")
def good_dsn(pg: Any) -> str:
    pg.psql(GOOD_ROLES, dbname="postgres")
    return _create_db(pg, "doctor_good", AUTH_SQL + GOOD_SCHEMA)


@pytest.fixture(scope="module")
def demo_dsn(pg: Any) -> str:
    files = [ROOT / "rlsproxy/sql/auth.sql", ROOT / "examples/schema.sql", ROOT / "examples/seed.sql"]
    return _create_db(pg, "doctor_demo", "\n".join(f.read_text() for f in files))


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rlsproxy.yaml"
    path.write_text(text)
    return str(path)


BAD_YAML = """
upstream: {user: doc_authenticator}
jwt: {secret: "${DOCTOR_TEST_UNSET_SECRET}"}   # a missing secret must not stop the doctor
roles: {allowed: [doc_anon, doc_authenticated, doc_reporter, doc_ghost], anonymous: doc_anon,
        default: doc_authenticated}
services:
  - {name: sync, match: {sub: "svc:sync"}, roles: [doc_service_role], labels: ["job:*"]}
"""
GOOD_YAML = """
upstream: {user: doc_good_authenticator, service_user: doc_good_service, service_password: x}
jwt: {secret: "${DOCTOR_TEST_UNSET_SECRET}"}
roles: {allowed: [doc_good_anon, doc_good_authenticated], anonymous: doc_good_anon,
        default: doc_good_authenticated}
services:
  - {name: sync, match: {sub: "svc:sync"}, roles: [doc_good_service_role], labels: ["job:*"]}
"""
DEMO_YAML = """
upstream: {user: authenticator, service_user: rlsproxy_service, service_password: x}
jwt: {secret: "${DOCTOR_TEST_UNSET_SECRET}"}
roles: {allowed: [anon, authenticated], anonymous: anon, default: authenticated}
services:
  - {name: sync, match: {sub: "svc:sync"}, roles: [service_role], labels: ["job:*"]}
"""


# --------------------------------------------------------------------------------------------
# The findings


def test_bad_database_has_exactly_the_planted_mistakes(bad_dsn: str, server_version: int) -> None:
    assert _triples(_doctor(bad_dsn, BAD_CONFIG)) == _expected_bad(server_version)


def test_good_database_is_clean(good_dsn: str) -> None:
    assert _doctor(good_dsn, GOOD_CONFIG) == []


@pytest.mark.parametrize("check", CHECK_IDS)
def test_each_check_fires_on_bad_and_stays_quiet_on_good(
    check: str, bad_dsn: str, good_dsn: str, server_version: int
) -> None:
    assert check in {c for _, c, _ in _expected_bad(server_version)}
    assert check in {f.check for f in _doctor(bad_dsn, BAD_CONFIG)}
    assert check not in {f.check for f in _doctor(good_dsn, GOOD_CONFIG)}


def test_demo_schema_is_clean_but_for_the_set_config_note(demo_dsn: str) -> None:
    """examples/schema.sql + roles.sql: no error, no warning. The one info finding is escape-hatch:
    PostgreSQL grants EXECUTE on set_config to PUBLIC, so anon/authenticated may call it; only the
    proxy's statement guard stops that (and SET needs no privilege anyway)."""
    findings = _doctor(demo_dsn, DEMO_CONFIG)
    assert _triples(findings) == [("info", "escape-hatch", SET_CONFIG)]
    assert "anon, authenticated" in findings[0].message


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("doc_super", [("error", "login-role-privileged", "role doc_super")]),  # SUPERUSER
        ("doc_nobody", [("error", "login-role-not-member", "role doc_nobody")]),  # does not exist
    ],
)
def test_login_role_scenarios(good_dsn: str, user: str, expected: list[tuple[str, str, str]]) -> None:
    config = Config(
        upstream=UpstreamConfig(user=user), roles=GOOD_CONFIG.roles, services=GOOD_CONFIG.services
    )
    findings = _doctor(good_dsn, config)
    assert _triples(findings) == expected
    if user == "doc_super":
        assert "SUPERUSER" in findings[0].message
        assert findings[0].fix == 'ALTER ROLE "doc_super" NOSUPERUSER;'


def test_service_user_configured_but_login_still_member(bad_dsn: str) -> None:
    config = Config(
        upstream=UpstreamConfig(user="doc_authenticator", service_user="doc_owner"),
        roles=BAD_CONFIG.roles,
        services=BAD_CONFIG.services,
    )
    shared = [f for f in _doctor(bad_dsn, config) if f.check == "service-login-shared"]
    assert len(shared) == 1
    assert "protects nothing" in shared[0].message


def test_view_not_invoker_is_advice_before_postgres_15(bad_dsn: str) -> None:
    with psycopg.connect(bad_dsn, autocommit=True) as conn:
        ctx = Context(
            conn=conn,
            config=BAD_CONFIG,
            schemas=("public",),
            server_version=140000,
            end_user_roles=("doc_anon",),
            existing_end_user_roles=("doc_anon",),
        )
        found = checks_tables.view_not_invoker(ctx)
    assert _triples(found) == [("info", "view-not-invoker", "public.post_view")]
    assert 'REVOKE SELECT ON "public"."post_view" FROM "doc_anon";' in found[0].fix.splitlines()


def test_explicit_schema_replaces_the_exposed_ones(bad_dsn: str) -> None:
    """util is not exposed by default (no end-user USAGE); named explicitly, it is examined instead
    of public: its SECURITY DEFINER trigger function, callable through PUBLIC, now shows."""
    findings = _doctor(bad_dsn, BAD_CONFIG, ["util"])
    assert not [f for f in findings if "public.posts" in f.object or f.object.startswith("public.")]
    assert ("security-definer-exposed", "function util.audit_fn()") in {(f.check, f.object) for f in findings}


def test_following_the_fixes_converges(pg: Any) -> None:
    """Run the fix SQL of every table/policy/function finding (roles are cluster-wide: left out)
    until nothing changes. What is left: findings whose fix is advice (comments only), and
    set-config-function, whose REVOKE narrows who can call the function directly but cannot stop
    triggers or other functions calling it (the fix says so; only dropping it clears the finding)."""
    dsn = _create_db(pg, "doctor_fix", AUTH_SQL + BAD_SCHEMA)
    role_checks = {"login-role-privileged", "end-user-role-problem", "login-role-not-member",
                   "service-login-shared"}  # fmt: skip
    applied: set[tuple[str, str]] = set()
    for _ in range(4):
        todo = [
            f for f in _doctor(dsn, BAD_CONFIG)
            if f.check not in role_checks and (f.check, f.object) not in applied
            and any(line.strip() and not line.lstrip().startswith("--") for line in f.fix.splitlines())
        ]  # fmt: skip
        if not todo:
            break
        with psycopg.connect(dsn, autocommit=True) as conn:
            for f in todo:
                conn.execute(f.fix.encode())  # several statements: simple query protocol
                applied.add((f.check, f.object))
    left = [f for f in _doctor(dsn, BAD_CONFIG) if f.check not in role_checks]
    assert _triples(left) == [
        ("error", "set-config-function", "function util.as_alice()"),
        ("error", "set-config-function", "function util.become(r text)"),
        ("error", "set-config-function", "function util.become_sql()"),
        ("info", "escape-hatch", SET_CONFIG),
        ("info", "using-true-select", 'policy "public read" on public.posts'),
    ]


# --------------------------------------------------------------------------------------------
# Command line: exit codes, JSON, text


def test_cli_json_is_the_documented_document(
    bad_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], server_version: int
) -> None:
    rc = main(["--dsn", bad_dsn, "--config", _yaml(tmp_path, BAD_YAML), "--format", "json"])
    assert rc == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"version", "database", "server_version", "findings", "summary"}
    assert doc["version"] == 1
    assert doc["database"] == "doctor_bad"
    assert doc["server_version"].split(".")[0] == str(server_version // 10000)
    expected = _expected_bad(server_version)
    assert sorted((f["severity"], f["check"], f["object"]) for f in doc["findings"]) == expected
    assert all(set(f) == {"severity", "check", "object", "message", "fix"} for f in doc["findings"])
    order = {"error": 0, "warning": 1, "info": 2}
    keys = [(order[f["severity"]], f["check"], f["object"]) for f in doc["findings"]]
    assert keys == sorted(keys)
    assert doc["summary"] == {s: sum(1 for e in expected if e[0] == s) for s in ("error", "warning", "info")}


def test_cli_text_groups_by_severity_without_colour_off_a_tty(
    bad_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--dsn", bad_dsn, "--config", _yaml(tmp_path, BAD_YAML)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "\033[" not in out
    assert out.index("ERROR (") < out.index("WARNING (") < out.index("INFO (")
    assert 'fix: ALTER TABLE "public"."open_notes" ENABLE ROW LEVEL SECURITY;' in out
    assert out.rstrip().splitlines()[-1].startswith("Summary: ")


def test_text_colour_only_when_asked(bad_dsn: str) -> None:
    with psycopg.connect(bad_dsn, autocommit=True) as conn:
        report = examine(conn, BAD_CONFIG)
    assert "\033[1;31mERROR" in to_text(report, colour=True)
    assert "\033[" not in to_text(report, colour=False)


@pytest.mark.parametrize(
    ("which", "fail_on", "rc"),
    [
        ("good", "info", 0),
        ("demo", "error", 0),
        ("demo", "warning", 0),
        ("demo", "info", 1),  # the escape-hatch note
        ("bad", "error", 1),
    ],
)
def test_cli_exit_codes(
    which: str, fail_on: str, rc: int, request: pytest.FixtureRequest, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    dsn = request.getfixturevalue(f"{which}_dsn")
    yaml = {"good": GOOD_YAML, "demo": DEMO_YAML, "bad": BAD_YAML}[which]
    assert main(["--dsn", dsn, "--config", _yaml(tmp_path, yaml), "--fail-on", fail_on]) == rc
    if which == "good":
        assert capsys.readouterr().out.rstrip().endswith("No findings: the RLS posture looks right.")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_cli_usage_and_connection_errors_exit_2(
    good_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _yaml(tmp_path, GOOD_YAML)
    monkeypatch.delenv("RLSPROXY_CONFIG", raising=False)
    assert main(["--dsn", good_dsn]) == 2  # no config
    assert main(["--dsn", good_dsn, "--config", config, "--format", "xml"]) == 2
    assert main(["--dsn", good_dsn, "--config", config, "--schema", "nope"]) == 2
    assert main(["--dsn", good_dsn, "--config", str(tmp_path / "missing.yaml")]) == 2
    port = _closed_port()
    assert main(["--dsn", f"postgresql://postgres@127.0.0.1:{port}/x", "--config", config]) == 2
    needs_var = _yaml(
        tmp_path, GOOD_YAML.replace("user: doc_good_authenticator", 'user: "${DOCTOR_NO_SUCH}"')
    )
    assert main(["--dsn", good_dsn, "--config", needs_var]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err
    assert "does not exist" in err
    assert "DOCTOR_NO_SUCH" in err


def test_module_runs_as_a_script(bad_dsn: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rlsproxy.doctor.cli", "--dsn", bad_dsn, "--config", _yaml(tmp_path, BAD_YAML),
         "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["summary"]["error"] > 0


# --------------------------------------------------------------------------------------------
# The expression heuristics (no database)


@pytest.mark.parametrize(
    ("expr", "columns", "per_row"),
    [
        ("auth.uid() = user_id", ["user_id"], ["auth.uid()"]),
        ("( SELECT auth.uid() AS uid) = user_id", ["user_id"], []),
        ("user_id = ((auth.jwt() ->> 'sub'::text))::uuid", ["user_id"], ["auth.jwt()"]),
        ("(current_setting('request.jwt.claim.sub', true))::uuid = owner", ["owner"], ["current_setting()"]),
        ("org_id IN ( SELECT m.org_id FROM members m WHERE m.user_id = auth.uid())", [], ["auth.uid()"]),
        ("is_public", [], []),
        ("auth.can_see(org_id)", [], []),  # depends on the row: cannot run once per statement
    ],
)
def test_policy_expression_heuristics(expr: str, columns: list[str], per_row: list[str]) -> None:
    node = parse_expr(expr)
    assert [c for c, _ in uid_comparisons(node)] == columns
    assert [call_name(c) for c in per_row_calls(node)] == per_row


@pytest.mark.parametrize(
    ("language", "source", "changed"),
    [
        ("sql", "select set_config('role', 'x', true)", True),
        ("sql", "select set_config('search_path', '', true)", False),
        ("sql", "select set_config(name, 'x', true) from t", True),  # computed name: assume the worst
        ("plperl", "spi_exec_query(\"select set_config('request.jwt.claims', '', true)\")", True),
        ("plperl", "return 'role';", False),
    ],
)
def test_identity_change_detection(language: str, source: str, changed: bool) -> None:
    assert bool(identity_changes(language, source, None)) is changed


def test_rlsproxy_doctor_subcommand(bad_dsn: str, good_dsn: str, tmp_path: Path) -> None:
    """`rlsproxy doctor`, the main CLI's subcommand, as a process: JSON, exit 1 on errors, 0 when clean."""
    doctor = [sys.executable, "-m", "rlsproxy", "doctor"]
    bad = subprocess.run(
        [*doctor, "--dsn", bad_dsn, "--config", _yaml(tmp_path, BAD_YAML), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["summary"]["error"] > 0
    good = subprocess.run(
        [*doctor, "--dsn", good_dsn, "--config", _yaml(tmp_path, GOOD_YAML)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "No findings" in good.stdout
