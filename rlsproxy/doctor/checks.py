"""Run every check against one database: :func:`run_doctor`.

The checks only read the catalog (one transaction, ``search_path = pg_catalog`` so that
``pg_get_expr`` qualifies every function outside pg_catalog, e.g. ``auth.uid()``). Each check is
a small function ``(Context) -> list[Finding]`` in checks_tables, checks_policies or checks_roles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, LiteralString

import psycopg

from rlsproxy.config import Config
from rlsproxy.doctor import checks_policies, checks_roles, checks_tables
from rlsproxy.doctor.base import Context, Finding, end_user_roles
from rlsproxy.doctor.report import Report, sorted_findings

Check = Callable[[Context], list[Finding]]

#: Every check, in report order of discovery (the report sorts findings anyway).
CHECKS: tuple[Check, ...] = (
    checks_tables.rls_disabled,
    checks_tables.rls_no_policy,
    checks_tables.owner_not_forced,
    checks_policies.update_without_check,
    checks_policies.using_true,
    checks_tables.insert_without_policy,
    checks_policies.per_row_uid,
    checks_policies.policy_column_unindexed,
    checks_tables.view_not_invoker,
    checks_tables.security_definer_exposed,
    checks_tables.set_config_function,
    checks_tables.partition_without_rls,
    checks_tables.trigger_security_definer,
    checks_roles.login_role_privileged,
    checks_roles.end_user_role_problem,
    checks_roles.login_role_not_member,
    checks_roles.service_login_shared,
    checks_roles.escape_hatch,
)

#: Every check id a finding may carry.
CHECK_IDS = (
    "rls-disabled",
    "rls-no-policy",
    "owner-not-forced",
    "update-without-check",
    "using-true-write",
    "using-true-select",
    "insert-without-policy",
    "per-row-uid",
    "policy-column-unindexed",
    "view-not-invoker",
    "security-definer-exposed",
    "set-config-function",
    "partition-without-rls",
    "trigger-security-definer",
    "login-role-privileged",
    "end-user-role-problem",
    "login-role-not-member",
    "service-login-shared",
    "escape-hatch",
)


class DoctorError(Exception):
    """A usage problem found in the database, e.g. a --schema that does not exist."""


_EXISTING_ROLES: LiteralString = (
    "select u from unnest(%s::text[]) with ordinality as t(u, i) "
    "where exists (select 1 from pg_catalog.pg_roles where rolname = u) order by i"
)
_EXPOSED: LiteralString = """
select n.nspname from pg_catalog.pg_namespace n
where n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
  and exists (select 1 from unnest(%s::text[]) u where has_schema_privilege(u, n.oid, 'USAGE'))
order by 1
"""
_MISSING_SCHEMAS: LiteralString = """
select s from unnest(%s::text[]) s where not exists (select 1 from pg_catalog.pg_namespace where nspname = s)
"""


def run_doctor(
    conn: psycopg.Connection[Any], config: Config, schemas: Sequence[str] | None = None
) -> list[Finding]:
    """Every finding for the database ``conn`` is connected to, sorted by severity, check, object.

    ``schemas``: the exposed schemas to examine; None or empty means every non-system schema on
    which an end-user role has USAGE. Raises DoctorError if a named schema does not exist.
    The connection should belong to a role that can read the whole catalog (a superuser or the
    database owner); it is left as found (the work happens in one transaction, or a savepoint).
    """
    return list(examine(conn, config, schemas).findings)


def examine(conn: psycopg.Connection[Any], config: Config, schemas: Sequence[str] | None = None) -> Report:
    """:func:`run_doctor` plus what the report header shows (database, version, schemas)."""
    findings: list[Finding] = []
    with conn.transaction():
        before = conn.execute("select pg_catalog.current_setting('search_path')").fetchone()
        conn.execute("select pg_catalog.set_config('search_path', 'pg_catalog', true)")
        ctx = _context(conn, config, schemas)
        for check in CHECKS:
            findings.extend(check(ctx))
        row = ctx.one(
            "select pg_catalog.current_database()::text, pg_catalog.current_setting('server_version')"
        )
        # Inside a caller's transaction this was a savepoint, whose release keeps local settings.
        assert before is not None
        conn.execute("select pg_catalog.set_config('search_path', %s, true)", (before[0],))
    assert row is not None
    return Report(
        database=str(row[0]),
        server_version=str(row[1]),
        schemas=ctx.schemas,
        findings=sorted_findings(list(dict.fromkeys(findings))),
    )


def login_context(conn: psycopg.Connection[Any], config: Config) -> Context:
    """What the login-role checks need (serve runs them at start and reload, proxy.py)."""
    return Context(
        conn=conn,
        config=config,
        schemas=(),
        server_version=conn.info.server_version,
        end_user_roles=end_user_roles(config),
    )


def _context(conn: psycopg.Connection[Any], config: Config, schemas: Sequence[str] | None) -> Context:
    ctx = login_context(conn, config)
    ctx.existing_end_user_roles = tuple(r for (r,) in ctx.rows(_EXISTING_ROLES, (list(ctx.end_user_roles),)))
    if schemas:
        missing = [s for (s,) in ctx.rows(_MISSING_SCHEMAS, (list(schemas),))]
        if missing:
            raise DoctorError(f"schema {', '.join(missing)} does not exist in this database")
        ctx.schemas = tuple(dict.fromkeys(schemas))
    else:
        ctx.schemas = tuple(s for (s,) in ctx.rows(_EXPOSED, (list(ctx.existing_end_user_roles),)))
    return ctx
