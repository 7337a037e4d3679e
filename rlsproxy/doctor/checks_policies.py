"""Checks on policy expressions (parsed with pglast; see rlsproxy.doctor.exprs for the heuristics)."""

from __future__ import annotations

from typing import LiteralString

from rlsproxy.doctor.base import Context, Finding, display, fix_sql, raw, roles_text
from rlsproxy.doctor.catalog import Policy, policies
from rlsproxy.doctor.exprs import (
    call_name,
    column_names,
    deparse,
    is_true,
    parse_expr,
    per_row_calls,
    uid_comparisons,
    wrap_per_row_calls,
)


def _alter(policy: Policy, clause: LiteralString, expression: str) -> str:
    return fix_sql(
        "ALTER POLICY {} ON {} " + clause + " ({});", policy.name, policy.qualified, raw(expression)
    )


def update_without_check(ctx: Context) -> list[Finding]:
    """UPDATE/ALL policies: no WITH CHECK at all, or one that never names the column(s) USING
    compares with the user id (by column name; see exprs.uid_comparisons)."""
    found = []
    for p in policies(ctx):
        if p.cmd not in ("w", "*") or not p.using or is_true(parse_expr(p.using)):
            continue  # USING (true) is using-true-write's
        if p.check is None:
            found.append(
                Finding(
                    "warning",
                    "update-without-check",
                    p.shown,
                    f"This {p.command} policy has USING but no WITH CHECK; PostgreSQL then checks new rows "
                    "with USING, an implicit rule easy to loosen by accident when USING is edited.",
                    _alter(p, "WITH CHECK", p.using),
                )
            )
            continue
        comparisons = uid_comparisons(parse_expr(p.using))
        mentioned = column_names(parse_expr(p.check))
        missing = [(col, node) for col, node in comparisons if col not in mentioned]
        if missing:
            columns = ", ".join(dict.fromkeys(col for col, _ in missing))
            wanted = " AND ".join(dict.fromkeys(deparse(node) for _, node in missing))
            found.append(
                Finding(
                    "warning",
                    "update-without-check",
                    p.shown,
                    f"USING compares {columns} with the user id but WITH CHECK never mentions it, so a user "
                    "can update their row to belong to someone else.",
                    _alter(p, "WITH CHECK", f"({p.check}) AND {wanted}"),
                )
            )
    return found


def _owner_columns(ctx: Context, policy: Policy) -> list[str]:
    columns: list[str] = []
    for other in policies(ctx):
        if other.table_oid == policy.table_oid:
            for text in (other.using, other.check):
                columns += [col for col, _ in uid_comparisons(parse_expr(text))]
    return list(dict.fromkeys(columns))


def _applies_to_end_users(p: Policy) -> bool:
    return bool(p.applies_to) or "public" in p.roles


def using_true(ctx: Context) -> list[Finding]:
    """``using-true-write`` for UPDATE/DELETE/ALL, ``using-true-select`` for SELECT."""
    found = []
    for p in policies(ctx):
        if not _applies_to_end_users(p):
            continue
        who = roles_text(p.applies_to or ("PUBLIC",))
        true_using, true_check = is_true(parse_expr(p.using)), is_true(parse_expr(p.check))
        if p.cmd in ("w", "d", "*") and (true_using or true_check):
            clause = "USING (true)" if true_using else "WITH CHECK (true)"
            column = (_owner_columns(ctx, p) or ["user_id"])[0]
            condition = fix_sql("(SELECT auth.uid()) = {}", column)
            fix = _alter(p, "USING", condition) if true_using else ""
            if p.cmd != "d" and (true_check or p.check is None):
                fix = (fix + "\n" if fix else "") + _alter(p, "WITH CHECK", condition)
            found.append(
                Finding(
                    "error",
                    "using-true-write",
                    p.shown,
                    f"This {p.command} policy has {clause} and applies to {who}, so they can "
                    f"{'delete' if p.cmd == 'd' else 'change'} every row.",
                    fix
                    + "\n-- adjust the owner column; or, for public reads only, make it a FOR SELECT policy",
                )
            )
        elif p.cmd == "r" and true_using:
            found.append(
                Finding(
                    "info",
                    "using-true-select",
                    p.shown,
                    f"Every row is readable by {who}: right for public data; check the table holds no PII.",
                    "-- nothing to change if every row and column is meant to be public;\n"
                    "-- otherwise narrow it, e.g.:\n-- " + _alter(p, "USING", "is_public"),
                )
            )
    return found


def per_row_uid(ctx: Context) -> list[Finding]:
    found = []
    for p in policies(ctx):
        using, check = parse_expr(p.using), parse_expr(p.check)
        calls = per_row_calls(using) + per_row_calls(check)
        if not calls:
            continue
        names = ", ".join(dict.fromkeys(call_name(c) for c in calls))
        fixes = []
        if using is not None and per_row_calls(using):
            fixes.append(_alter(p, "USING", wrap_per_row_calls(using)))
        if check is not None and per_row_calls(check):
            fixes.append(_alter(p, "WITH CHECK", wrap_per_row_calls(check)))
        found.append(
            Finding(
                "info",
                "per-row-uid",
                p.shown,
                f"It calls {names} once per row; written as (select {call_name(calls[0])}) the "
                "planner runs it once per statement (an initPlan), which is much faster on big tables.",
                "\n".join(fixes),
            )
        )
    return found


_INDEXED: LiteralString = """
select a.attname, exists (select 1 from pg_catalog.pg_index i
                          where i.indrelid = a.attrelid and i.indkey[0] = a.attnum)
from pg_catalog.pg_attribute a
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attname = any(%s::text[])
"""


def policy_column_unindexed(ctx: Context) -> list[Finding]:
    wanted: dict[int, dict[str, Policy]] = {}
    for p in policies(ctx):
        for text in (p.using, p.check):
            for col, _ in uid_comparisons(parse_expr(text)):
                wanted.setdefault(p.table_oid, {}).setdefault(col, p)
    found = []
    for table_oid, columns in wanted.items():
        for col, indexed in ctx.rows(_INDEXED, (table_oid, list(columns))):
            if indexed:
                continue
            p = columns[col]
            found.append(
                Finding(
                    "warning",
                    "policy-column-unindexed",
                    display(p.schema, p.table, col),
                    f"Policies compare {col} with the user id but no index starts with it, so every "
                    "query scans the whole table.",
                    fix_sql("CREATE INDEX ON {} ({});", p.qualified, col),
                )
            )
    return found
