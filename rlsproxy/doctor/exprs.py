"""Reading policy expressions and function bodies with pglast (pure: no I/O).

Policy expressions come from ``pg_get_expr`` (with ``search_path = pg_catalog``, so functions
outside pg_catalog are schema-qualified) and are parsed as ``SELECT <expression>``.

What counts as *the user id*: ``auth.uid()``, ``auth.jwt() ->> 'sub'``,
``current_setting('request.jwt.claim.sub', ...)`` and
``current_setting('request.jwt.claims', ...)::json[b] ->> 'sub'``, each possibly cast or wrapped
in a scalar sub-select. A *user-id comparison* is ``<that> = <column>`` (either side, casts
allowed) outside any sub-select that has a FROM clause (columns there belong to other tables).

A *request-context call* is a call of a function in schema ``auth`` or of ``current_setting``
whose arguments mention no column. It is *wrapped* when the nearest enclosing SELECT has no
FROM clause, i.e. the ``(select auth.uid())`` form the planner runs once per statement
(an initPlan) instead of once per row.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import cast

import pglast
from pglast import ast, enums
from pglast.parser import ParseError
from pglast.stream import RawStream

from rlsproxy.session.guard_plpgsql import DynamicExecute, Unanalysable, embedded_sql

Ancestors = tuple[ast.Node, ...]

_JWT_CLAIMS_SETTINGS = ("request.jwt.claims", "request.jwt.claim")


# --------------------------------------------------------------------------------------------
# Parsing and walking


def parse_expr(text: str | None) -> ast.Node | None:
    """The expression tree of ``text``, or None when there is none or it does not parse."""
    if not text:
        return None
    try:
        statements = pglast.parse_sql("SELECT " + text)
    except ParseError:
        return None
    stmt = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(stmt, ast.SelectStmt) or not stmt.targetList or len(stmt.targetList) != 1:
        return None
    target = stmt.targetList[0]
    return target.val if isinstance(target, ast.ResTarget) else None


def deparse(node: ast.Node) -> str:
    return str(RawStream()(node))


def _children(value: object) -> Iterator[ast.Node]:
    if isinstance(value, ast.Node):
        for name in getattr(value, "__slots__", ()):
            yield from _nodes_in(getattr(value, name, None))


def _nodes_in(value: object) -> Iterator[ast.Node]:
    if isinstance(value, ast.Node):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _nodes_in(item)


def walk(node: ast.Node, ancestors: Ancestors = ()) -> Iterator[tuple[ast.Node, Ancestors]]:
    """Every node under ``node`` (itself included), each with its ancestors, outermost first."""
    yield node, ancestors
    inner = (*ancestors, node)
    for child in _children(node):
        yield from walk(child, inner)


def _names(funcname: object) -> tuple[str, ...]:
    if not isinstance(funcname, tuple | list):
        return ()
    return tuple(str(n.sval).lower() for n in funcname if isinstance(n, ast.String))


def _unwrap(node: object) -> object:
    """Strip casts and a scalar ``(SELECT x)`` without FROM: what is left is what is compared."""
    while True:
        if isinstance(node, ast.TypeCast):
            node = node.arg
        elif isinstance(node, ast.SubLink) and node.subLinkType == enums.SubLinkType.EXPR_SUBLINK:
            select = node.subselect
            if not isinstance(select, ast.SelectStmt) or select.fromClause or not select.targetList:
                return node
            if len(select.targetList) != 1 or not isinstance(select.targetList[0], ast.ResTarget):
                return node
            node = select.targetList[0].val
        else:
            return node


def _const_string(node: object) -> str | None:
    node = _unwrap(node)
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def is_true(node: ast.Node | None) -> bool:
    """The literal ``true`` (pg_get_expr prints ``USING (true)`` as ``true``)."""
    return isinstance(node, ast.A_Const) and isinstance(node.val, ast.Boolean) and bool(node.val.boolval)


def column_names(node: ast.Node | None) -> set[str]:
    """The last name of every column reference anywhere in ``node``."""
    found: set[str] = set()
    if node is not None:
        for n, _ in walk(node):
            name = _column(n)
            if name is not None:
                found.add(name)
    return found


def _column(node: object) -> str | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ColumnRef) and node.fields and isinstance(node.fields[-1], ast.String):
        return str(node.fields[-1].sval)
    return None


# --------------------------------------------------------------------------------------------
# The user id


def _is_current_setting(node: object, names: tuple[str, ...]) -> bool:
    if not isinstance(node, ast.FuncCall) or _names(node.funcname) not in (
        ("current_setting",),
        ("pg_catalog", "current_setting"),
    ):
        return False
    setting = _const_string(node.args[0]) if node.args else None
    return setting is not None and setting.lower() in names


def _is_jwt(node: object) -> bool:
    node = _unwrap(node)
    if isinstance(node, ast.FuncCall) and _names(node.funcname) == ("auth", "jwt"):
        return True
    if isinstance(node, ast.FuncCall) and _names(node.funcname) in (("nullif",), ("coalesce",)) and node.args:
        return _is_jwt(node.args[0])
    return _is_current_setting(node, _JWT_CLAIMS_SETTINGS)


def is_user_id(node: object) -> bool:
    node = _unwrap(node)
    if isinstance(node, ast.FuncCall) and _names(node.funcname) == ("auth", "uid"):
        return True
    if _is_current_setting(node, ("request.jwt.claim.sub",)):
        return True
    return (
        isinstance(node, ast.A_Expr)
        and node.kind == enums.A_Expr_Kind.AEXPR_OP
        and _names(node.name) in (("->>",), ("->",))
        and _const_string(node.rexpr) == "sub"
        and _is_jwt(node.lexpr)
    )


def _inside_from_select(ancestors: Ancestors) -> bool:
    return any(isinstance(a, ast.SelectStmt) and a.fromClause for a in ancestors)


def uid_comparisons(node: ast.Node | None) -> list[tuple[str, ast.Node]]:
    """``(column, comparison)`` for each ``<user id> = <column>`` of the policy's own table."""
    found: list[tuple[str, ast.Node]] = []
    if node is None:
        return found
    for n, ancestors in walk(node):
        if not isinstance(n, ast.A_Expr) or n.kind != enums.A_Expr_Kind.AEXPR_OP:
            continue
        if _names(n.name) != ("=",) or _inside_from_select(ancestors):
            continue
        for side, other in ((n.lexpr, n.rexpr), (n.rexpr, n.lexpr)):
            column = _column(side)
            if column is not None and is_user_id(other):
                found.append((column, n))
    return found


# --------------------------------------------------------------------------------------------
# Request-context calls evaluated per row


def _is_context_call(node: object) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    names = _names(node.funcname)
    if not (len(names) == 2 and names[0] == "auth") and names not in (
        ("current_setting",),
        ("pg_catalog", "current_setting"),
    ):
        return False
    return not any(column_names(arg) for arg in _nodes_in(node.args))


def _wrapped(ancestors: Ancestors) -> bool:
    for a in reversed(ancestors):
        if isinstance(a, ast.SelectStmt):
            return not a.fromClause
    return False


def per_row_calls(node: ast.Node | None) -> list[ast.FuncCall]:
    """Request-context calls not wrapped in ``(select ...)``, outermost first."""
    found: list[ast.FuncCall] = []
    if node is None:
        return found
    seen: set[int] = set()
    for n, ancestors in walk(node):
        # A call inside one already found gets wrapped with it.
        if _is_context_call(n) and not _wrapped(ancestors) and not any(id(a) in seen for a in ancestors):
            assert isinstance(n, ast.FuncCall)
            found.append(n)
            seen.add(id(n))
    return found


def call_name(call: ast.FuncCall) -> str:
    return ".".join(_names(call.funcname)) + "()"


def wrap_per_row_calls(node: ast.Node) -> str:
    """``node`` as SQL with every per-row request-context call wrapped as ``(SELECT call)``."""
    tree = copy.deepcopy(node)
    targets = {id(c) for c in per_row_calls(tree)}
    holder = ast.ResTarget(val=tree)
    _replace_calls(holder, targets)
    return deparse(cast(ast.Node, holder.val))


def _replace_calls(parent: ast.Node, targets: set[int]) -> None:
    for name in getattr(parent, "__slots__", ()):
        value = getattr(parent, name, None)
        if isinstance(value, ast.Node):
            if id(value) in targets:
                setattr(parent, name, _scalar_select(value))
            else:
                _replace_calls(value, targets)
        elif isinstance(value, tuple):
            setattr(parent, name, tuple(_replace_in_item(v, targets) for v in value))


def _replace_in_item(value: object, targets: set[int]) -> object:
    if isinstance(value, ast.Node):
        if id(value) in targets:
            return _scalar_select(value)
        _replace_calls(value, targets)
    return value


def _scalar_select(value: ast.Node) -> ast.SubLink:
    select = ast.SelectStmt(
        targetList=(ast.ResTarget(val=value),),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subLinkId=0, subselect=select)


# --------------------------------------------------------------------------------------------
# Function bodies that change the identity the proxy pinned

_SET_CONFIG_TEXT = re.compile(r"set_config\s*\(\s*('*)([^',)\s]*)", re.IGNORECASE)
_SET_TEXT = re.compile(
    r"\bset\s+(?:local\s+|session\s+)?(role|session\s+authorization|\"?request\.jwt[a-z0-9_.]*)",
    re.IGNORECASE,
)


def is_protected_setting(name: str) -> bool:
    lowered = name.strip().strip('"').lower()
    return lowered in ("role", "session_authorization") or lowered.startswith("request.jwt")


def identity_changes(language: str, source: str, functiondef: str | None) -> list[str]:
    """How a function body changes role / session_authorization / request.jwt.*, one line each.

    sql: the body (or, for BEGIN ATOMIC bodies, the whole CREATE FUNCTION) is parsed.
    plpgsql: every embedded SQL statement and expression is parsed.
    Anything else, or anything that does not parse or builds SQL at run time (EXECUTE): a text
    search for ``set_config(`` and ``SET ROLE`` / ``SET request.jwt...`` (marked "by text").
    """
    texts: list[str] | None = None
    reason = f"language {language}"
    if language == "sql":
        texts = [source if source.strip() else (functiondef or "")]
    elif language == "plpgsql" and functiondef:
        try:
            texts = embedded_sql(functiondef)
        except DynamicExecute as exc:
            reason = f"builds SQL at run time ({exc.construct})"
        except Unanalysable as exc:
            reason = f"could not be parsed ({exc.reason})"
    if texts is not None:
        try:
            return _changes_in_sql(texts)
        except ParseError:
            reason = "could not be parsed"
    return [f"{change} (found by text search: the body {reason})" for change in _changes_in_text(source)]


def _changes_in_sql(texts: list[str]) -> list[str]:
    changes: list[str] = []
    for text in texts:
        for stmt in pglast.parse_sql(text):
            for node, _ in walk(stmt):
                changes.extend(_change(node))
    return list(dict.fromkeys(changes))


def _change(node: ast.Node) -> list[str]:
    if isinstance(node, ast.FuncCall) and _names(node.funcname) in (
        ("set_config",),
        ("pg_catalog", "set_config"),
    ):
        name = _const_string(node.args[0]) if node.args else None
        if name is None:
            return ["set_config(<a setting name computed at run time>, ...)"]
        return [f"set_config('{name}', ...)"] if is_protected_setting(name) else []
    if isinstance(node, ast.VariableSetStmt) and node.name and is_protected_setting(str(node.name)):
        return [f"SET {node.name}"]
    return []


def _changes_in_text(source: str) -> list[str]:
    changes: list[str] = []
    for m in _SET_CONFIG_TEXT.finditer(source):
        quotes, name = m.group(1), m.group(2)
        if not quotes:
            changes.append("set_config(<a setting name computed at run time>, ...)")
        elif is_protected_setting(name):
            changes.append(f"set_config('{name}', ...)")
    for m in _SET_TEXT.finditer(source):
        changes.append("SET " + " ".join(m.group(1).strip('"').lower().split()))
    return list(dict.fromkeys(changes))
