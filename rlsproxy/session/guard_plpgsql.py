"""Extract the SQL a PL/pgSQL body would run, so the guard can check it like client SQL.

libpg_query compiles a ``CREATE FUNCTION ... LANGUAGE plpgsql`` or ``DO`` statement into a raw tree
of plain dicts and lists. Every piece of SQL in it (statements, conditions, assignments, loop
bounds, cursor queries, RAISE arguments, ...) is a ``PLpgSQL_expr`` holding the text and the
grammar it is parsed with; :func:`embedded_sql` turns each one into text that
:func:`pglast.parse_sql` accepts. Dynamic SQL (``EXECUTE``, ``FOR ... IN EXECUTE``,
``RETURN QUERY EXECUTE``, ``OPEN ... FOR EXECUTE``) cannot be checked: it raises
:class:`DynamicExecute`. Whatever cannot be analysed raises :class:`Unanalysable`.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast.parser import ParseError, scan

__all__ = ["DynamicExecute", "Unanalysable", "controls_transactions", "embedded_sql"]

# RawParseMode (src/include/parser/parser.h) of a PLpgSQL_expr.
_RAW_PARSE_DEFAULT = 0  # a whole SQL statement
_RAW_PARSE_PLPGSQL_EXPR = 2  # an expression, i.e. what follows SELECT
_RAW_PARSE_PLPGSQL_ASSIGN = (3, 4, 5)  # "target[...] := expression"

# Statements whose SQL is computed at run time.
_DYNAMIC_STATEMENTS = {
    "PLpgSQL_stmt_dynexecute": "EXECUTE",
    "PLpgSQL_stmt_dynfors": "FOR ... IN EXECUTE",
}
# The member holding the computed SQL of RETURN QUERY EXECUTE and OPEN ... FOR EXECUTE.
_DYNAMIC_MEMBER = "dynquery"

_OPEN_BRACKETS = {"ASCII_40", "ASCII_91"}  # ( [
_CLOSE_BRACKETS = {"ASCII_41", "ASCII_93"}  # ) ]
_ASSIGN_TOKENS = {"COLON_EQUALS", "ASCII_61"}  # := =


class DynamicExecute(Exception):
    """The body runs SQL built at run time; ``construct`` names the PL/pgSQL construct."""

    def __init__(self, construct: str) -> None:
        super().__init__(construct)
        self.construct = construct


class Unanalysable(Exception):
    """The body, or a piece of SQL in it, cannot be parsed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def embedded_sql(statement: str) -> list[str]:
    """Return, in body order, the SQL texts a PL/pgSQL ``CREATE FUNCTION``/``DO`` statement embeds.

    ``statement`` is the text of exactly one such statement. Each returned text is one or more
    complete SQL statements (expressions come back as ``SELECT <expression>``).
    """
    try:
        functions = pglast.parse_plpgsql(statement)
    except ParseError as exc:
        raise Unanalysable(str(exc.args[0]) if exc.args else "PL/pgSQL parse error") from None
    if not isinstance(functions, list) or len(functions) != 1:
        raise Unanalysable("expected exactly one PL/pgSQL body")
    texts: list[str] = []
    pending: list[Any] = [functions[0]]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            children: list[Any] = []
            for key, value in item.items():
                if key in _DYNAMIC_STATEMENTS:
                    raise DynamicExecute(_DYNAMIC_STATEMENTS[key])
                if key == _DYNAMIC_MEMBER:
                    raise DynamicExecute("EXECUTE")
                if key == "PLpgSQL_expr":
                    texts.extend(_expression_sql(value))
                else:
                    children.append(value)
            pending.extend(reversed(children))  # keep body order: the stack pops the first child next
        elif isinstance(item, list):
            pending.extend(reversed(item))
    return texts


def _expression_sql(expr: Any) -> list[str]:
    if not isinstance(expr, dict) or not isinstance(expr.get("query"), str):
        raise Unanalysable("a PL/pgSQL expression without SQL text")
    query: str = expr["query"]
    mode = expr.get("parseMode", _RAW_PARSE_DEFAULT)
    if mode == _RAW_PARSE_DEFAULT:
        return [query]
    if mode == _RAW_PARSE_PLPGSQL_EXPR:
        return ["SELECT " + query]
    if mode in _RAW_PARSE_PLPGSQL_ASSIGN:
        target, value = _split_assignment(query)
        # The target may carry subscripts, which are expressions too: a[f()] := 1.
        return ["SELECT " + target, "SELECT " + value]
    raise Unanalysable(f"PL/pgSQL expression of unknown parse mode {mode!r}")


def _split_assignment(query: str) -> tuple[str, str]:
    """Split ``target[...] := expression`` (or ``=``) at its assignment token, found with the lexer."""
    try:
        tokens = scan(query)
    except ParseError as exc:
        raise Unanalysable(str(exc.args[0]) if exc.args else "PL/pgSQL scan error") from None
    depth = 0
    for token in tokens:
        if token.name in _OPEN_BRACKETS:
            depth += 1
        elif token.name in _CLOSE_BRACKETS:
            depth -= 1
        elif depth == 0 and token.name in _ASSIGN_TOKENS:
            target, value = query[: token.start], query[token.end + 1 :]
            if target.strip() and value.strip():
                return target, value
            break
    raise Unanalysable("a PL/pgSQL assignment without an assignment operator")


# Statements that end the transaction a non-atomic DO block runs in (a CALL may too, in its body).
_TRANSACTION_CONTROL = frozenset({"PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback", "PLpgSQL_stmt_call"})


def controls_transactions(statement: str) -> bool:
    """Whether a PL/pgSQL DO block may COMMIT or ROLLBACK (itself or in a procedure it CALLs).

    Unparseable bodies answer True: the guard refuses them anyway, and this must not say "safe".
    """
    try:
        pending: list[Any] = list(pglast.parse_plpgsql(statement))
    except ParseError:
        return True
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if not _TRANSACTION_CONTROL.isdisjoint(item):
                return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
