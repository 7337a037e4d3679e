"""Checks on the roles the config names: the proxy's login, the end-user roles, the service roles."""

from __future__ import annotations

from typing import Any, LiteralString

from rlsproxy.doctor.base import (
    Context,
    Finding,
    display,
    fix_sql,
    identifiers,
    raw,
    roles_text,
)

_ROLE: LiteralString = (
    "select oid, rolsuper, rolbypassrls, rolinherit from pg_catalog.pg_roles where rolname = %s"
)
_KIND_WORD = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}
_SHOWN = 5  # objects named in a message before "and N more"


def _role(ctx: Context, name: str) -> tuple[Any, ...] | None:
    return ctx.one(_ROLE, (name,))


def _some(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _role_object(name: str) -> str:
    return f"role {display(name)}"


# --------------------------------------------------------------------------------------------
# login-role-privileged

_OWNED: LiteralString = """
select n.nspname, c.relname, c.relkind::text
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where c.relowner = %s::oid and c.relkind in ('r', 'p', 'v', 'm', 'f')
  and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
order by 1, 2
"""

_GRANTED: LiteralString = """
select n.nspname, c.relname, c.relkind::text, a.privilege_type
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace,
     lateral pg_catalog.aclexplode(c.relacl) a
where a.grantee = %(oid)s::oid and c.relowner <> %(oid)s::oid
  and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
union all
select n.nspname, c.relname, c.relkind::text, a.privilege_type || ' (' || att.attname || ')'
from pg_catalog.pg_attribute att
join pg_catalog.pg_class c on c.oid = att.attrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace,
     lateral pg_catalog.aclexplode(att.attacl) a
where a.grantee = %(oid)s::oid and not att.attisdropped and c.relowner <> %(oid)s::oid
  and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
order by 1, 2, 4
"""

_INHERITED_GRANTS: LiteralString = """
select r.rolname from pg_catalog.pg_auth_members m join pg_catalog.pg_roles r on r.oid = m.roleid
where m.member = %s::oid and m.inherit_option
order by 1
"""


def login_role_privileged(ctx: Context) -> list[Finding]:
    """One finding per problem with upstream.user.

    Nothing if the role does not exist: login-role-not-member reports that.
    """
    login = ctx.config.upstream.user
    row = _role(ctx, login)
    if row is None:
        return []
    oid, superuser, bypass, inherit = row
    obj = _role_object(login)
    found = []

    def add(message: str, fix: str) -> None:
        found.append(Finding("error", "login-role-privileged", obj, message, fix))

    if superuser:
        add(
            f"The proxy's login {login} is a SUPERUSER: superusers skip RLS and every privilege check, so a "
            "transaction that misses the role switch sees everything.",
            fix_sql("ALTER ROLE {} NOSUPERUSER;", login),
        )
    if bypass:
        add(
            f"The proxy's login {login} has BYPASSRLS: a transaction that misses the role switch "
            "sees every row.",
            fix_sql("ALTER ROLE {} NOBYPASSRLS;", login),
        )
    if inherit:
        when = (
            " (on PostgreSQL 16+, every membership granted from now on)"
            if ctx.server_version >= 160000
            else ""
        )
        add(
            f"The proxy's login {login} has INHERIT, so it holds the privileges of the roles it is a "
            "member of"
            f"{when} before any switch: a transaction that misses it does not fail closed.",
            fix_sql("ALTER ROLE {} NOINHERIT;", login),
        )
    if ctx.server_version >= 160000:
        inherited = [r for (r,) in ctx.rows(_INHERITED_GRANTS, (oid,))]
        if inherited:
            add(
                f"{login} is a member of {_some(inherited)} WITH INHERIT TRUE (PostgreSQL 16+ decides "
                "inheritance "
                "per grant), so it holds their privileges without switching.",
                "\n".join(fix_sql("REVOKE INHERIT OPTION FOR {} FROM {};", r, login) for r in inherited),
            )
    owned = ctx.rows(_OWNED, (oid,))
    if owned:
        add(
            f"{login} owns {_some([display(s, n) for s, n, _ in owned])}: an owner holds every privilege on "
            "them and skips their RLS unless forced, whatever NOINHERIT says.",
            "\n".join(
                fix_sql("ALTER {} {} OWNER TO CURRENT_USER;", raw(_KIND_WORD[k]), (s, n)) for s, n, k in owned
            ),
        )
    granted: dict[tuple[str, str, str], list[str]] = {}
    for schema, name, kind, privilege in ctx.rows(_GRANTED, {"oid": oid}):
        granted.setdefault((schema, name, kind), []).append(privilege)
    if granted:
        shown = [f"{display(s, n)} ({', '.join(p)})" for (s, n, _), p in granted.items()]
        add(
            f"{login} holds privileges of its own on {_some(shown)}: the switchboard login should hold "
            "none, so that a transaction without a role switch can read nothing.",
            "\n".join(
                fix_sql(
                    "REVOKE ALL ON {} {} FROM {};", raw("SEQUENCE" if k == "S" else "TABLE"), (s, n), login
                )
                for s, n, k in granted
            ),
        )
    return found


# --------------------------------------------------------------------------------------------
# end-user-role-problem

_BYPASS_MEMBERSHIPS: LiteralString = """
select b.rolname, b.rolsuper,
       array(select d.rolname from pg_catalog.pg_auth_members m join pg_catalog.pg_roles d on d.oid = m.roleid
             where m.member = %(oid)s::oid and pg_has_role(d.oid, b.oid, 'MEMBER') order by 1)
from pg_catalog.pg_roles b
where (b.rolbypassrls or b.rolsuper) and b.oid <> %(oid)s::oid and pg_has_role(%(oid)s::oid, b.oid, 'MEMBER')
order by 1
"""


def end_user_role_problem(ctx: Context) -> list[Finding]:
    found = []
    for name in ctx.end_user_roles:
        obj = _role_object(name)
        row = _role(ctx, name)
        if row is None:
            found.append(
                Finding(
                    "error",
                    "end-user-role-problem",
                    obj,
                    f"The end-user role {name} does not exist, so switching to it fails for every client "
                    "given it.",
                    fix_sql("CREATE ROLE {} NOLOGIN;", name)
                    + "\n"
                    + fix_sql("GRANT {} TO {};", name, ctx.config.upstream.user),
                )
            )
            continue
        oid, superuser, bypass, _ = row
        if superuser:
            found.append(
                Finding(
                    "error",
                    "end-user-role-problem",
                    obj,
                    f"The end-user role {name} is a SUPERUSER, so RLS never applies to its clients.",
                    fix_sql("ALTER ROLE {} NOSUPERUSER;", name),
                )
            )
            continue  # a superuser is a member of every role: the membership test below says nothing
        if bypass:
            found.append(
                Finding(
                    "error",
                    "end-user-role-problem",
                    obj,
                    f"The end-user role {name} has BYPASSRLS, so no policy applies to its clients.",
                    fix_sql("ALTER ROLE {} NOBYPASSRLS;", name),
                )
            )
        for target, target_super, links in ctx.rows(_BYPASS_MEMBERSHIPS, {"oid": oid}):
            via = "" if links == [target] else f" through {roles_text(links)}"
            attribute = "SUPERUSER" if target_super else "BYPASSRLS"
            found.append(
                Finding(
                    "error",
                    "end-user-role-problem",
                    obj,
                    f"The end-user role {name} is a member of {target} ({attribute}){via}: "
                    "attributes are not "
                    f"inherited, but one SET ROLE {target} past the proxy's guard escapes RLS.",
                    "\n".join(fix_sql("REVOKE {} FROM {};", link, name) for link in links),
                )
            )
    return found


# --------------------------------------------------------------------------------------------
# login-role-not-member

_NOT_MEMBER_OF: LiteralString = """
select u from unnest(%(roles)s::text[]) u where not pg_has_role(%(login)s, u, %(privilege)s) order by 1
"""


def login_role_not_member(ctx: Context) -> list[Finding]:
    login = ctx.config.upstream.user
    obj = _role_object(login)
    row = _role(ctx, login)
    grant: LiteralString = "GRANT {} TO {};"
    if ctx.server_version >= 160000:
        grant = "GRANT {} TO {} WITH INHERIT FALSE, SET TRUE;"
    if row is None:
        return [
            Finding(
                "error",
                "login-role-not-member",
                obj,
                f"The proxy's login {login} (upstream.user) does not exist.",
                fix_sql("CREATE ROLE {} LOGIN NOINHERIT;", login)
                + " -- then set its password\n"
                + "\n".join(fix_sql(grant, r, login) for r in ctx.existing_end_user_roles),
            )
        ]
    if row[1]:  # a superuser is a member of everything (and login-role-privileged says so)
        return []
    privilege = "SET" if ctx.server_version >= 160000 else "MEMBER"
    params = {"roles": list(ctx.existing_end_user_roles), "login": login, "privilege": privilege}
    missing = [r for (r,) in ctx.rows(_NOT_MEMBER_OF, params)]
    if not missing:
        return []
    return [
        Finding(
            "error",
            "login-role-not-member",
            obj,
            f"The proxy's login {login} cannot switch to {roles_text(missing)} (no membership"
            f"{' with SET' if privilege == 'SET' else ''}), "
            "so set_config('role', ...) fails for those clients.",
            "\n".join(fix_sql(grant, r, login) for r in missing),
        )
    ]


# --------------------------------------------------------------------------------------------
# service-login-shared

_BYPASS_SERVICE_ROLES: LiteralString = """
select b.rolname from pg_catalog.pg_roles b
where b.rolname = any(%(roles)s::text[]) and b.rolbypassrls and pg_has_role(%(login)s, b.oid, 'MEMBER')
order by 1
"""


def service_login_shared(ctx: Context) -> list[Finding]:
    login, service_user = ctx.config.upstream.user, ctx.config.upstream.service_user
    row = _role(ctx, login)
    service_roles = list(dict.fromkeys(r for s in ctx.config.services for r in s.roles))
    if row is None or row[1] or not service_roles:
        return []
    shared = [r for (r,) in ctx.rows(_BYPASS_SERVICE_ROLES, {"roles": service_roles, "login": login})]
    if not shared:
        return []
    revoke = "\n".join(fix_sql("REVOKE {} FROM {};", r, login) for r in shared)
    if service_user:
        message = (
            f"upstream.service_user is {service_user}, yet {login} can still switch to "
            f"{roles_text(shared)} (BYPASSRLS): the separate login protects nothing until it cannot."
        )
        fix = revoke
    else:
        message = (
            f"{login} can switch to {roles_text(shared)} (BYPASSRLS) and upstream.service_user is not set: "
            "every end-user connection is one role switch from bypassing RLS, whereas a separate service "
            "login keeps bypass off those connections even if the guard or the login's password fails."
        )
        service = f"{login}_service"
        fix = "\n".join(
            [fix_sql("CREATE ROLE {} LOGIN NOINHERIT;", service) + " -- then set its password"]
            + [fix_sql("GRANT {} TO {};", r, service) for r in shared]
            + [revoke, f"-- and set upstream.service_user: {service} (and service_password) in the config"]
        )
    return [Finding("warning", "service-login-shared", _role_object(login), message, fix)]


# --------------------------------------------------------------------------------------------
# escape-hatch

_SET_CONFIG_CALLERS: LiteralString = """
select u from unnest(%s::text[]) u
where has_function_privilege(u, 'pg_catalog.set_config(text, text, boolean)', 'EXECUTE')
order by 1
"""
_CONNECTION_FUNCTIONS: LiteralString = """
select n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       array(select u from unnest(%(roles)s::text[]) u where has_function_privilege(u, p.oid, 'EXECUTE'))
from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where p.proname in ('dblink_connect', 'dblink_connect_u', 'dblink', 'dblink_exec')
order by 1, 2, 3
"""
_SERVERS: LiteralString = """
select s.srvname,
       array(select u from unnest(%s::text[]) u where has_server_privilege(u, s.oid, 'USAGE'))
from pg_catalog.pg_foreign_server s
order by 1
"""


def escape_hatch(ctx: Context) -> list[Finding]:
    roles = list(ctx.existing_end_user_roles)
    found = []
    callers = [r for (r,) in ctx.rows(_SET_CONFIG_CALLERS, (roles,))]
    if callers:
        found.append(
            Finding(
                "info",
                "escape-hatch",
                "function pg_catalog.set_config(text, text, boolean)",
                f"{roles_text(callers)} may call set_config (PostgreSQL grants it to PUBLIC, and SET needs "
                "no grant at all): normal, but it is the proxy's statement guard that stops a client "
                "choosing its own role or claims.",
                "-- nothing to change in the database; keep the proxy's statement guard on",
            )
        )
    groups: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    for schema, name, args, users in ctx.rows(_CONNECTION_FUNCTIONS, {"roles": roles}):
        if users:
            groups.setdefault((schema, name), []).append((args, users))
    for (schema, name), overloads in groups.items():
        users = list(dict.fromkeys(u for _, us in overloads for u in us))
        found.append(
            Finding(
                "info",
                "escape-hatch",
                f"function {display(schema, name)}",
                f"{roles_text(users)} may call {name}, which opens a new database connection under whatever "
                "credentials are passed, outside the proxy and its role switch.",
                "\n".join(
                    fix_sql(
                        "REVOKE EXECUTE ON FUNCTION {}({}) FROM PUBLIC, {};",
                        (schema, name),
                        raw(args),
                        identifiers(users),
                    )
                    for args, _ in overloads
                ),
            )
        )
    for server, users in ctx.rows(_SERVERS, (roles,)):
        if users:
            found.append(
                Finding(
                    "info",
                    "escape-hatch",
                    f"foreign server {display(server)}",
                    f"{roles_text(users)} may use this foreign server, i.e. reach another database "
                    "outside the proxy.",
                    fix_sql("REVOKE USAGE ON FOREIGN SERVER {} FROM PUBLIC, {};", server, identifiers(users)),
                )
            )
    return found
