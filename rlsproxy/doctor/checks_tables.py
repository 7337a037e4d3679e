"""Checks on tables, partitions, views, functions and triggers in the exposed schemas."""

from __future__ import annotations

from typing import LiteralString

from rlsproxy.doctor.base import (
    Context,
    Finding,
    Severity,
    display,
    fix_sql,
    identifiers,
    quoted,
    raw,
    roles_text,
)
from rlsproxy.doctor.catalog import policies_on, tables
from rlsproxy.doctor.exprs import identity_changes, is_protected_setting

_OWNER_COLUMN_HINT = "--   (user_id: the column holding the row owner's id)"


def _commented(text: str) -> str:
    """Alternatives in a fix are commented out, so that a fix runs as a script."""
    return "\n".join("-- " + line for line in text.splitlines())


def rls_disabled(ctx: Context) -> list[Finding]:
    return [
        Finding(
            "error",
            "rls-disabled",
            t.shown,
            f"Row-level security is not enabled, so {roles_text(t.reached_by)} can reach every row "
            "(their grants are the only limit).",
            fix_sql("ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", t.qualified)
            + "\n-- then add policies: with none, end users see no rows at all",
        )
        for t in tables(ctx)
        if not t.rls and t.reached_by
    ]


def rls_no_policy(ctx: Context) -> list[Finding]:
    """Partitions are skipped: with no policy of their own they are closed to direct queries,
    while queries through the parent use the parent's policies."""
    found = []
    for t in tables(ctx):
        if t.rls and t.reached_by and not t.is_partition and not policies_on(ctx, t.oid):
            role = t.reached_by[-1]
            found.append(
                Finding(
                    "warning",
                    "rls-no-policy",
                    t.shown,
                    f"RLS is enabled but there is no policy, so {roles_text(t.reached_by)} get no rows "
                    "and every write fails (default deny): either their grants or the policies are missing.",
                    "-- if end users should reach it, write the policies you intend, e.g.:\n"
                    + _commented(
                        fix_sql(
                            "CREATE POLICY {} ON {} FOR SELECT TO {} USING ((SELECT auth.uid()) = user_id);",
                            "owner reads own rows",
                            t.qualified,
                            role,
                        )
                    )
                    + f"\n{_OWNER_COLUMN_HINT}\n-- otherwise drop the grants, which give nothing today:\n"
                    + fix_sql("REVOKE ALL ON {} FROM {};", t.qualified, identifiers(t.reached_by)),
                )
            )
    return found


def owner_not_forced(ctx: Context) -> list[Finding]:
    """Owners that are superusers or BYPASSRLS skip RLS even when forced: not reported here."""
    found = []
    for t in tables(ctx):
        if t.forced or t.owner_super or t.owner_bypass:
            continue
        if t.owner in ctx.end_user_roles:
            who = f"its owner {t.owner} is an end-user role"
        elif t.owner_inherited_by:
            who = f"{roles_text(t.owner_inherited_by)} inherit the privileges of its owner {t.owner}"
        elif t.owner_login:
            who = f"its owner {t.owner} can log in"
        else:
            continue
        found.append(
            Finding(
                "error",
                "owner-not-forced",
                t.shown,
                f"Table owners bypass RLS unless it is forced, and {who}.",
                fix_sql("ALTER TABLE {} FORCE ROW LEVEL SECURITY;", t.qualified)
                + "\n-- better still, hand the table to a NOLOGIN owner role no end user is a member of",
            )
        )
    return found


def insert_without_policy(ctx: Context) -> list[Finding]:
    found = []
    for t in tables(ctx):
        if not t.rls or not t.insert_by:
            continue
        allowing = [p for p in policies_on(ctx, t.oid) if p.cmd in ("a", "*") and p.permissive]
        missing = [r for r in t.insert_by if not any(r in p.applies_to for p in allowing)]
        if not missing:
            continue
        fix = "\n".join(
            fix_sql(
                "CREATE POLICY {} ON {} FOR INSERT TO {} WITH CHECK ((SELECT auth.uid()) = user_id);",
                f"{role} inserts own rows",
                t.qualified,
                role,
            )
            for role in missing
        )
        revoke = fix_sql("REVOKE INSERT ON {} FROM {};", t.qualified, identifiers(missing))
        found.append(
            Finding(
                "warning",
                "insert-without-policy",
                t.shown,
                f"{roles_text(missing)} may INSERT but no INSERT or ALL policy applies to them, "
                "so every insert fails the RLS check.",
                f"-- if they should insert, write the policy, e.g.:\n{_commented(fix)}\n"
                f"{_OWNER_COLUMN_HINT}\n"
                f"-- otherwise drop the grant, which gives nothing today:\n{revoke}",
            )
        )
    return found


_VIEWS: LiteralString = """
select n.nspname, c.relname,
       coalesce((select option_value from pg_catalog.pg_options_to_table(c.reloptions)
                 where option_name = 'security_invoker'), 'false'),
       array(select u from unnest(%(roles)s::text[]) u where has_table_privilege(u, c.oid, 'SELECT'))
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'v' and n.nspname = any(%(schemas)s::text[])
order by 1, 2
"""

# PostgreSQL's parse_bool: any prefix of true/yes (t, y, ye, ...), on, 1.
_TRUE_WORDS = {"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"}


def view_not_invoker(ctx: Context) -> list[Finding]:
    params = {"roles": list(ctx.existing_end_user_roles), "schemas": list(ctx.schemas)}
    found = []
    for schema, name, invoker, readers in ctx.rows(_VIEWS, params):
        if not readers or str(invoker).strip().lower() in _TRUE_WORDS:
            continue
        if ctx.server_version >= 150000:
            severity: Severity = "error"
            advice = ""
            fix = fix_sql("ALTER VIEW {} SET (security_invoker = true);", (schema, name))
        else:
            severity = "info"
            advice = (
                " security_invoker needs PostgreSQL 15; until then give it an owner that RLS and the "
                "policies apply to, or keep end users out."
            )
            fix = (
                "-- on PostgreSQL 15+: "
                + fix_sql("ALTER VIEW {} SET (security_invoker = true);", (schema, name))
                + "\n-- before that, keep end users out:\n"
                + fix_sql("REVOKE SELECT ON {} FROM {};", (schema, name), identifiers(readers))
            )
        found.append(
            Finding(
                severity,
                "view-not-invoker",
                display(schema, name),
                f"{roles_text(readers)} can select from this view, which reads its tables with its owner's "
                f"rights, so the owner's RLS applies (or none), not theirs.{advice}",
                fix,
            )
        )
    return found


_ROUTINE_KIND = {"f": "FUNCTION", "p": "PROCEDURE"}

_SECURITY_DEFINER: LiteralString = """
select n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.prokind::text,
       pg_catalog.pg_get_userbyid(p.proowner)::text,
       array(select u from unnest(%(roles)s::text[]) u where has_function_privilege(u, p.oid, 'EXECUTE'))
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where p.prosecdef and p.prokind in ('f', 'p') and n.nspname = any(%(schemas)s::text[])
order by 1, 2, 3
"""


def security_definer_exposed(ctx: Context) -> list[Finding]:
    params = {"roles": list(ctx.existing_end_user_roles), "schemas": list(ctx.schemas)}
    found = []
    for schema, name, args, kind, owner, callers in ctx.rows(_SECURITY_DEFINER, params):
        if not callers:
            continue
        word = _ROUTINE_KIND[kind]
        signature = fix_sql("{}({})", (schema, name), raw(args))
        found.append(
            Finding(
                "error",
                "security-definer-exposed",
                f"{word.lower()} {display(schema, name)}({args})",
                f"{roles_text(callers)} can call this SECURITY DEFINER {word.lower()}, which runs as "
                f"{owner}, "
                f"with {owner}'s rights and RLS status instead of theirs.",
                f"ALTER {word} {signature} SECURITY INVOKER;\n"
                f"-- or, if it must stay SECURITY DEFINER, keep end users out:\n"
                + _commented(_revoke_execute(word, signature, callers)),
            )
        )
    return found


_IDENTITY_CANDIDATES: LiteralString = """
select n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.prokind::text,
       l.lanname, p.prosrc, p.proconfig,
       case when l.lanname in ('sql', 'plpgsql') then pg_catalog.pg_get_functiondef(p.oid) end
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
join pg_catalog.pg_language l on l.oid = p.prolang
where p.prokind in ('f', 'p') and l.lanname not in ('c', 'internal')
  and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
  and (p.prosrc ilike any(%(patterns)s::text[]) or p.proconfig is not null
       or (l.lanname = 'sql' and p.prosrc = ''))
order by 1, 2, 3
"""
_PATTERNS = ["%set_config%", "%role%", "%request.jwt%", "%session%authorization%"]


def set_config_function(ctx: Context) -> list[Finding]:
    found = []
    for schema, name, args, kind, language, source, config, functiondef in ctx.rows(
        _IDENTITY_CANDIDATES, {"patterns": _PATTERNS}
    ):
        changes = identity_changes(language, source or "", functiondef)
        changes += [
            f"SET {c.split('=', 1)[0]} (a SET clause of the function)"
            for c in config or []
            if _protected_clause(c)
        ]
        if not changes:
            continue
        word = _ROUTINE_KIND[kind]
        signature = fix_sql("{}({})", (schema, name), raw(args))
        found.append(
            Finding(
                "error",
                "set-config-function",
                f"{word.lower()} {display(schema, name)}({args})",
                f"It changes the identity the proxy pinned for the transaction ({'; '.join(changes)}), "
                "so whoever can call it can choose whose rows they see.",
                _revoke_execute(word, signature, ctx.existing_end_user_roles)
                + "\n-- this finding stays: triggers and other functions still reach it; if nothing needs it:"
                + f"\n-- DROP {word} {signature};",
            )
        )
    return found


def _revoke_execute(word: str, signature: str, roles: tuple[str, ...] | list[str]) -> str:
    template: LiteralString = (
        "REVOKE EXECUTE ON {} {} FROM PUBLIC, {};" if roles else "REVOKE EXECUTE ON {} {} FROM PUBLIC;"
    )
    return fix_sql(template, raw(word), raw(signature), identifiers(list(roles)))


def _protected_clause(clause: str) -> bool:
    return is_protected_setting(clause.split("=", 1)[0])


_UNPROTECTED_CHILDREN: LiteralString = """
with recursive up(child, ancestor) as (
    select inhrelid, inhparent from pg_catalog.pg_inherits
    union
    select up.child, i.inhparent from up join pg_catalog.pg_inherits i on i.inhrelid = up.ancestor
)
select cn.nspname, cc.relname,
       (array_agg(pn.nspname order by pn.nspname, pc.relname))[1],
       (array_agg(pc.relname order by pn.nspname, pc.relname))[1]
from up
join pg_catalog.pg_class cc on cc.oid = up.child
join pg_catalog.pg_namespace cn on cn.oid = cc.relnamespace
join pg_catalog.pg_class pc on pc.oid = up.ancestor
join pg_catalog.pg_namespace pn on pn.oid = pc.relnamespace
where cc.relkind in ('r', 'p') and not cc.relrowsecurity and pc.relrowsecurity
  and pn.nspname = any(%(schemas)s::text[])
group by cn.nspname, cc.relname
order by 1, 2
"""


def partition_without_rls(ctx: Context) -> list[Finding]:
    return [
        Finding(
            "error",
            "partition-without-rls",
            display(schema, name),
            f"It is a partition or child of {display(pschema, parent)}, which has RLS, but has none itself: "
            "a query naming it directly skips the parent's policies.",
            fix_sql("ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", (schema, name))
            + "\n-- and repeat the parent's policies on it if end users may query it directly",
        )
        for schema, name, pschema, parent in ctx.rows(_UNPROTECTED_CHILDREN, {"schemas": list(ctx.schemas)})
    ]


_DEFINER_TRIGGERS: LiteralString = """
select n.nspname, c.relname, t.tgname, fn.nspname, f.proname, pg_catalog.pg_get_userbyid(f.proowner)::text
from pg_catalog.pg_trigger t
join pg_catalog.pg_class c on c.oid = t.tgrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
join pg_catalog.pg_proc f on f.oid = t.tgfoid
join pg_catalog.pg_namespace fn on fn.oid = f.pronamespace
where not t.tgisinternal and c.relrowsecurity and f.prosecdef and n.nspname = any(%(schemas)s::text[])
order by 1, 2, 3
"""


def trigger_security_definer(ctx: Context) -> list[Finding]:
    return [
        Finding(
            "warning",
            "trigger-security-definer",
            f"trigger {quoted(trigger)} on {display(schema, table)}",
            f"Its function {display(fschema, function)}() is SECURITY DEFINER, so whatever it reads "
            "or writes "
            f"runs with {owner}'s rights and RLS status, not the end user's.",
            fix_sql("ALTER FUNCTION {}() SECURITY INVOKER;", (fschema, function)),
        )
        for schema, table, trigger, fschema, function, owner in ctx.rows(
            _DEFINER_TRIGGERS, {"schemas": list(ctx.schemas)}
        )
    ]
