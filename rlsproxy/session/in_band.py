"""In-band identity: a client switches the identity of a transaction (or of its session) with a token.

Recognised shapes, each as a statement of its own (anything else touching ``rlsproxy.*`` stays
refused by the guard):

    SELECT set_config('rlsproxy.jwt', <token literal or $1>, true | false)
    SET LOCAL rlsproxy.jwt = '<token>'      SET rlsproxy.jwt = '<token>'      RESET rlsproxy.jwt

The proxy verifies the token itself, then sends Postgres a statement of its own instead of the
client's: it sets ``role`` and ``request.jwt.claims`` (transaction-local, as the context prefix
does) from one bind parameter, a JSON payload the proxy builds, and marks the transaction with
``rlsproxy.in_band`` so that a context prefix pipelined later in the same transaction leaves the
switched identity alone (see context.KEEPING_SQL). The rewritten statements give the reply the
client expects: ``set_config`` returns one text row named set_config, ``SET``/``RESET`` only
a command tag (the relay swaps the tag of the rewritten SELECT).

Scope: ``true`` / LOCAL changes the rest of the current transaction; ``false`` / SET also changes
the identity later transactions start with; RESET (or an empty token) goes back to the startup identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from pglast import ast, enums

SETTING: Final = "rlsproxy.jwt"

_PAYLOAD = "($1::text::jsonb)"
_APPLY = (
    f"set_config('role', {_PAYLOAD}->>'role', true) IS NOT NULL"
    f" AND set_config('request.jwt.claims', {_PAYLOAD}->>'claims', true) IS NOT NULL"
    " AND set_config('rlsproxy.in_band', 'on', true) IS NOT NULL"
)
# Session state that holds rows read, or acts, under the identity in force when it was made: a
# WITH HOLD cursor, a temporary relation, a LISTEN, an advisory lock. None of it may outlive a
# switch to another identity, so a switch while any exists fails (checked by Postgres, where the
# state is, not tracked by the proxy): the refusal marker in the error ("role ... does not
# exist", from a cast evaluated only in that branch) lets the relay show its own message.
HELD_STATE: Final = (
    "(EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " OR (pg_catalog.pg_my_temp_schema() <> 0 AND EXISTS"
    " (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()))"
    " OR EXISTS (SELECT FROM pg_catalog.pg_listening_channels())"
    " OR EXISTS (SELECT FROM pg_catalog.pg_locks"
    " WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()))"
)
# context.REFUSAL_MARKER, quoted so that the error names it as written
REFUSED_CAST: Final = """('"RLSPROXY_REFUSED"'::text)::regrole"""
# Same reply as set_config(): one text column named set_config holding the value set.
SET_CONFIG_SQL: Final = (
    f"SELECT CASE WHEN {HELD_STATE} THEN {REFUSED_CAST}::text"
    f" WHEN {_APPLY} THEN {_PAYLOAD}->>'value' END AS set_config"
)
# No rows and no columns; the relay replaces its "SELECT 0" tag with SET or RESET.
SET_SQL: Final = f"SELECT WHERE CASE WHEN {HELD_STATE} THEN {REFUSED_CAST} IS NULL ELSE NOT ({_APPLY}) END"


@dataclass(frozen=True, slots=True)
class InBand:
    form: Literal["set_config", "set", "reset"]
    local: bool  # true / SET LOCAL: this transaction only
    literal: str | None = None  # the token, when written in the SQL
    param: int | None = None  # 1-based bind parameter holding the token (extended protocol)

    @property
    def tag(self) -> bytes | None:
        """The command tag the client expects, for the forms that return no row."""
        return None if self.form == "set_config" else self.form.upper().encode()


def payload(role: str, claims_json: str, value: str) -> str:
    """The one bind parameter of the rewritten statement (values travel as parameters, never as SQL)."""
    return json.dumps({"role": role, "claims": claims_json, "value": value}, ensure_ascii=False)


def recognise(stmt: Any) -> InBand | None:
    """The in-band shape of a top-level statement, or None (then the guard's rules apply)."""
    if isinstance(stmt, ast.VariableSetStmt):
        return _variable_set(stmt)
    if isinstance(stmt, ast.SelectStmt):
        return _select(stmt)
    return None


def _variable_set(stmt: ast.VariableSetStmt) -> InBand | None:
    if (stmt.name or "").strip().lower() != SETTING:
        return None
    kind = stmt.kind
    if kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_SET_DEFAULT):
        return InBand("reset", bool(stmt.is_local))
    if kind == enums.VariableSetKind.VAR_SET_VALUE and stmt.args and len(stmt.args) == 1:
        value = stmt.args[0]
        if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String):
            return InBand("set", bool(stmt.is_local), literal=value.val.sval or "")
    return None


# A plain `SELECT set_config(...)`: nothing else may be in the statement.
_EMPTY_SELECT_PARTS: Final = (
    "distinctClause",
    "intoClause",
    "fromClause",
    "whereClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "valuesLists",
    "sortClause",
    "limitOffset",
    "limitCount",
    "lockingClause",
    "withClause",
    "larg",
    "rarg",
)


def _select(stmt: ast.SelectStmt) -> InBand | None:
    if any(getattr(stmt, part, None) for part in _EMPTY_SELECT_PARTS):
        return None
    targets = stmt.targetList or ()
    if len(targets) != 1 or not isinstance(targets[0], ast.ResTarget) or targets[0].name:
        return None
    call = targets[0].val
    if not isinstance(call, ast.FuncCall) or call.agg_filter or call.over or call.func_variadic:
        return None
    names = [(n.sval or "").lower() for n in call.funcname or () if isinstance(n, ast.String)]
    if names not in (["set_config"], ["pg_catalog", "set_config"]):
        return None
    args = call.args or ()
    if len(args) != 3 or any(isinstance(a, ast.NamedArgExpr) for a in args):
        return None
    name, value, is_local = args
    if not (isinstance(name, ast.A_Const) and isinstance(name.val, ast.String)):
        return None
    if (name.val.sval or "").strip().lower() != SETTING:
        return None
    local = _boolean(is_local)
    if local is None:
        return None
    if isinstance(value, ast.TypeCast) and _text_type(value.typeName):
        value = value.arg
    if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String):
        return InBand("set_config", local, literal=value.val.sval or "")
    if isinstance(value, ast.ParamRef) and value.number == 1:
        return InBand("set_config", local, param=1)
    return None


def _boolean(node: Any) -> bool | None:
    if isinstance(node, ast.A_Const):
        if isinstance(node.val, ast.Boolean):
            return bool(node.val.boolval)
        if isinstance(node.val, ast.String) and (node.val.sval or "").lower() in ("true", "false", "t", "f"):
            return (node.val.sval or "").lower() in ("true", "t")
    return None


def _text_type(type_name: Any) -> bool:
    parts = getattr(type_name, "names", None) or ()
    names = [(n.sval or "").lower() for n in parts if isinstance(n, ast.String)]
    return bool(names) and names[-1] in ("text", "varchar")
