"""Catalog facts several checks share, read once per run: tables and policies in the exposed schemas.

"Reach" follows PostgreSQL's own privilege functions: ``has_table_privilege`` and
``has_any_column_privilege`` count grants to the role itself, to PUBLIC, and to every role it
inherits; a policy "applies to" an end-user role when its role list holds PUBLIC or a role the
end-user role has the privileges of (``pg_has_role(..., 'USAGE')``), as RLS itself decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

from rlsproxy.doctor.base import Context, display, quoted

POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    kind: str  # r (table) or p (partitioned table)
    is_partition: bool
    rls: bool
    forced: bool
    owner: str
    owner_super: bool
    owner_bypass: bool
    owner_login: bool
    reached_by: tuple[str, ...]  # end-user roles with any privilege on it
    insert_by: tuple[str, ...]  # end-user roles with INSERT
    owner_inherited_by: tuple[str, ...]  # end-user roles that have the owner's privileges

    @property
    def qualified(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def shown(self) -> str:
        return display(self.schema, self.name)


@dataclass(frozen=True)
class Policy:
    table_oid: int
    schema: str
    table: str
    name: str
    cmd: str  # r a w d *
    permissive: bool
    using: str | None  # pg_get_expr text
    check: str | None
    roles: tuple[str, ...]  # as written: "public" for PUBLIC
    applies_to: tuple[str, ...]  # end-user roles it applies to

    @property
    def command(self) -> str:
        return POLICY_COMMANDS.get(self.cmd, self.cmd)

    @property
    def qualified(self) -> tuple[str, str]:
        return (self.schema, self.table)

    @property
    def shown(self) -> str:
        return f"policy {quoted(self.name)} on {display(self.schema, self.table)}"


_TABLES: LiteralString = """
select c.oid, n.nspname, c.relname, c.relkind, c.relispartition, c.relrowsecurity,
       c.relforcerowsecurity, o.rolname, o.rolsuper, o.rolbypassrls, o.rolcanlogin,
       array(select u from unnest(%(roles)s::text[]) u
             where has_table_privilege(u, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
                or has_any_column_privilege(u, c.oid, 'SELECT,INSERT,UPDATE,REFERENCES')),
       array(select u from unnest(%(roles)s::text[]) u where has_table_privilege(u, c.oid, 'INSERT')),
       array(select u from unnest(%(roles)s::text[]) u where pg_has_role(u, c.relowner, 'USAGE'))
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
join pg_catalog.pg_roles o on o.oid = c.relowner
where c.relkind in ('r', 'p') and n.nspname = any(%(schemas)s::text[])
order by n.nspname, c.relname
"""

_POLICIES: LiteralString = """
select p.polrelid, n.nspname, c.relname, p.polname, p.polcmd::text, p.polpermissive,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       array(select case when r = 0 then 'public' else pg_catalog.pg_get_userbyid(r)::text end
             from unnest(p.polroles) r),
       array(select u from unnest(%(roles)s::text[]) u
             where exists (select 1 from unnest(p.polroles) r
                           where case when r = 0 then true else pg_has_role(u, r, 'USAGE') end))
from pg_catalog.pg_policy p
join pg_catalog.pg_class c on c.oid = p.polrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname = any(%(schemas)s::text[])
order by n.nspname, c.relname, p.polname
"""


def tables(ctx: Context) -> list[Table]:
    found = ctx.cached("tables")
    if found is None:
        params = {"roles": list(ctx.existing_end_user_roles), "schemas": list(ctx.schemas)}
        found = [_table(row) for row in ctx.rows(_TABLES, params)]
        ctx.remember("tables", found)
    return list(found)


def policies(ctx: Context) -> list[Policy]:
    found = ctx.cached("policies")
    if found is None:
        params = {"roles": list(ctx.existing_end_user_roles), "schemas": list(ctx.schemas)}
        found = [_policy(row) for row in ctx.rows(_POLICIES, params)]
        ctx.remember("policies", found)
    return list(found)


def _table(row: tuple[Any, ...]) -> Table:
    oid, schema, name, kind, partition, rls, forced, owner, osuper, obypass, ologin, reach, ins, inh = row
    return Table(
        oid, schema, name, kind, partition, rls, forced, owner, osuper, obypass, ologin,
        tuple(reach), tuple(ins), tuple(inh),
    )  # fmt: skip


def _policy(row: tuple[Any, ...]) -> Policy:
    oid, schema, table, name, cmd, permissive, using, check, roles, applies_to = row
    return Policy(oid, schema, table, name, cmd, permissive, using, check, tuple(roles), tuple(applies_to))


def policies_on(ctx: Context, table_oid: int) -> list[Policy]:
    return [p for p in policies(ctx) if p.table_oid == table_oid]
