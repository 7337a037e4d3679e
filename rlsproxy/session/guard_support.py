"""Helpers of the statement guard: crash-proof parsing, and the commands Postgres runs only outside a
transaction block (which rlsproxy can therefore never run for a client).

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Final

import pglast
from pglast import ast, enums
from pglast.parser import ParseError, parse_sql_json

__all__ = ["json_depth", "needs_no_transaction", "parse"]

# pglast converts the C tree to Python objects recursively, without a stack check: a deep enough
# tree (``select 1+1+1...``) overflows the C stack and kills the process. Every tree level takes at
# least two characters of SQL, so texts up to _SHALLOW_TEXT are safe; longer ones are first
# parsed to JSON by libpg_query (which checks its stack) and refused when nested deeper than
# _MAX_JSON_DEPTH (about 5000 expression levels; Postgres itself gives up near that depth).
_SHALLOW_TEXT: Final = 16_384
_MAX_JSON_DEPTH: Final = 10_000


def parse(text: str) -> tuple[Any, ...]:
    """``pglast.parse_sql`` that cannot crash the process and never sees less than Postgres would."""
    if "\x00" in text:  # libpg_query stops at NUL; Postgres rejects it: never let the two disagree
        raise ParseError("query text contains a NUL character", text.index("\x00"))
    try:
        if len(text) > _SHALLOW_TEXT and json_depth(parse_sql_json(text)) > _MAX_JSON_DEPTH:
            raise ParseError("stack depth limit exceeded", None)
        return tuple(pglast.parse_sql(text))
    except UnicodeEncodeError as exc:  # lone surrogates from a lossy decode
        raise ParseError("invalid character in query text", exc.start) from None


def json_depth(tree: str) -> int:
    """Bracket nesting of a JSON text."""
    # Without escaped backslashes and quotes every '"' delimits a string: even pieces are outside.
    outside = "".join(tree.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = outside.encode().translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"{}[]")
_BRACKET_STEP: Final = [1 if b in b"{[" else -1 if b in b"}]" else 0 for b in range(256)]


_ALWAYS_OUTSIDE: Final[dict[type, str]] = {
    ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE",
    ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
    ast.DropTableSpaceStmt: "DROP TABLESPACE",
    ast.AlterSystemStmt: "ALTER SYSTEM",
    ast.CreateSubscriptionStmt: "CREATE SUBSCRIPTION",
    ast.AlterSubscriptionStmt: "ALTER SUBSCRIPTION",
    ast.DropSubscriptionStmt: "DROP SUBSCRIPTION",
}
_REINDEX_OUTSIDE: Final = {
    enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA: "REINDEX SCHEMA",
    enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM: "REINDEX SYSTEM",
    enums.ReindexObjectType.REINDEX_OBJECT_DATABASE: "REINDEX DATABASE",
}
_PREPARED_TRANSACTION: Final = {
    enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}


def needs_no_transaction(stmt: Any) -> str | None:
    """The command's name if Postgres refuses it inside a transaction block, else None."""
    kind = type(stmt)
    if kind in _ALWAYS_OUTSIDE:
        return _ALWAYS_OUTSIDE[kind]
    if kind is ast.VacuumStmt:
        return "VACUUM" if stmt.is_vacuumcmd else None
    if kind is ast.AlterDatabaseStmt:
        tablespace = any(isinstance(o, ast.DefElem) and o.defname == "tablespace" for o in stmt.options or ())
        return "ALTER DATABASE ... SET TABLESPACE" if tablespace else None
    if kind is ast.IndexStmt:
        return "CREATE INDEX CONCURRENTLY" if stmt.concurrent else None
    if kind is ast.DropStmt:
        return "DROP INDEX CONCURRENTLY" if stmt.concurrent else None
    if kind is ast.ReindexStmt:
        concurrent = any(_option_on(o, "concurrently") for o in stmt.params or ())
        return _REINDEX_OUTSIDE.get(stmt.kind) or ("REINDEX CONCURRENTLY" if concurrent else None)
    if kind is ast.ClusterStmt:
        return "CLUSTER without a table" if stmt.relation is None else None
    if kind is ast.AlterTableStmt:
        detach = any(
            isinstance(c, ast.AlterTableCmd)
            and c.subtype == enums.AlterTableType.AT_DetachPartition
            and isinstance(c.def_, ast.PartitionCmd)
            and c.def_.concurrent
            for c in stmt.cmds or ()
        )
        return "ALTER TABLE ... DETACH PARTITION CONCURRENTLY" if detach else None
    if kind is ast.TransactionStmt:
        return _PREPARED_TRANSACTION.get(stmt.kind)
    return None


def _option_on(option: Any, name: str) -> bool:
    """A boolean utility option (``CONCURRENTLY``, ``CONCURRENTLY true``) is given and not false."""
    if not isinstance(option, ast.DefElem) or option.defname != name:
        return False
    arg = option.arg
    if isinstance(arg, ast.String):
        return (arg.sval or "").lower() not in ("false", "off", "0", "no")
    if isinstance(arg, ast.Integer):
        return arg.ival != 0
    if isinstance(arg, ast.Boolean):
        return bool(arg.boolval)
    return True
