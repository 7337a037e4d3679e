"""What every check shares: the Finding record, the Context a check reads, and name formatting.

A check is a function ``(Context) -> list[Finding]``. It reads the catalog through
:meth:`Context.rows` (constant SQL, values as bind parameters only) and writes fix SQL with
:func:`fix_sql` (identifiers through ``psycopg.sql.Identifier``, so always quoted correctly).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import sql

from rlsproxy.config import Config

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")

_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, which check, on what, why it matters, and the SQL that fixes it."""

    severity: Severity
    check: str
    object: str
    message: str
    fix: str

    def sort_key(self) -> tuple[int, str, str, str]:
        return (SEVERITIES.index(self.severity), self.check, self.object, self.message)

    def as_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "check": self.check,
            "object": self.object,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class Context:
    """The connection and configuration a check reads, plus facts looked up once."""

    conn: psycopg.Connection[Any]
    config: Config
    #: The exposed schemas: table, policy, view and function checks look only here.
    schemas: tuple[str, ...]
    #: ``server_version_num``, e.g. 180000.
    server_version: int
    #: roles.allowed plus roles.anonymous, in config order, without duplicates.
    end_user_roles: tuple[str, ...]
    #: Those of ``end_user_roles`` that exist in the cluster (privilege functions need real roles).
    existing_end_user_roles: tuple[str, ...] = ()
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def rows(
        self, query: LiteralString, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def one(
        self, query: LiteralString, params: Sequence[Any] | dict[str, Any] = ()
    ) -> tuple[Any, ...] | None:
        found = self.rows(query, params)
        return found[0] if found else None

    def cached(self, key: str) -> Any:
        return self._cache.get(key)

    def remember(self, key: str, value: Any) -> None:
        self._cache[key] = value


def end_user_roles(config: Config) -> tuple[str, ...]:
    names = list(config.roles.allowed)
    if config.roles.anonymous is not None:
        names.append(config.roles.anonymous)
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# Names: `display` for the object column (quoted only when needed), `fix_sql` for the fix column.


def display(*parts: str) -> str:
    """``public.notes``; a part that is not a plain lower-case identifier is double-quoted."""
    return ".".join(p if _PLAIN_NAME.fullmatch(p) else quoted(p) for p in parts)


def quoted(name: str) -> str:
    """Always double-quoted, for policy and trigger names (often sentences)."""
    return '"' + name.replace('"', '""') + '"'


def roles_text(names: Sequence[str]) -> str:
    return ", ".join(names)


def fix_sql(template: LiteralString, *args: str | tuple[str, ...] | sql.Composable) -> str:
    """Render fix SQL: a str arg is one identifier, a tuple a qualified one, Composables go as is.

    ``fix_sql("ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", ("public", "notes"))``.
    """
    rendered: list[sql.Composable] = []
    for arg in args:
        if isinstance(arg, str):
            rendered.append(sql.Identifier(arg))
        elif isinstance(arg, tuple):
            rendered.append(sql.Identifier(*arg))
        else:
            rendered.append(arg)
    return sql.SQL(template).format(*rendered).as_string(None)


def identifiers(names: Sequence[str]) -> sql.Composable:
    """A comma-separated list of identifiers, e.g. for ``FROM "anon", "authenticated"``."""
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def raw(text: str) -> sql.Composable:
    """Text Postgres produced itself (an expression from pg_get_expr, argument types): pasted as is.

    Only for the fix column, which the doctor never executes.
    """
    return sql.SQL(text)  # deliberately not a LiteralString
