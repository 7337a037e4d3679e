"""The statement guard: refuse SQL that would change who the client is, before it reaches Postgres.

rlsproxy runs every client transaction as ``set_config('role', <role>, true)`` and
``set_config('request.jwt.claims', <json>, true)`` ahead of the client's statements, so Row-Level
Security applies as the verified token's identity. The upstream login role is a member of the
end-user roles, so a client that could run ``SET ROLE``, ``set_config('role', ...)``, ``RESET ROLE``
or overwrite ``request.jwt.claims`` could become anyone, or drop to the login role. The guard
parses the text with Postgres' own grammar (pglast/libpg_query) and walks every node of every
statement, including the SQL inside function bodies and DO blocks. What it cannot see into
(dynamic ``EXECUTE``, unparseable text, trusted non-SQL languages) is refused: it fails closed.

Pure: no I/O, no asyncio; one :class:`Guard` per process caches verdicts per exact text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from pglast import ast, enums
from pglast.parser import ParseError

from rlsproxy.session.context import RESERVED_PREFIX
from rlsproxy.session.guard_fast import ATOMIC, ENDS, NO_CONTEXT, plain_flow, plainly_allowed
from rlsproxy.session.guard_plpgsql import DynamicExecute, Unanalysable, controls_transactions, embedded_sql
from rlsproxy.session.guard_support import needs_no_transaction, parse
from rlsproxy.session.in_band import InBand, recognise
from rlsproxy.wire import pinned, sqlstate

__all__ = ["ALLOW", "RESERVED_NAME_PREFIX", "Guard", "Verdict", "classify", "is_reserved_statement_name"]

Action = Literal["allow", "refuse", "discard_all", "deallocate_all", "reset_all", "in_band"]

RESERVED_NAME_PREFIX: Final = RESERVED_PREFIX  # one definition, in context.py
_SYNTAX_ERROR: Final = "42601"
_STATEMENT_TOO_COMPLEX: Final = "54001"
_HINT_IDENTITY: Final = "the role and claims come from the client's verified token"
_HINT_MAINTENANCE: Final = "run maintenance commands directly against PostgreSQL as an administrator"
_MAX_BODY_DEPTH: Final = 8  # nested bodies (function in DO in function ...) before refusing
_MAX_CACHED_TEXT: Final = 16_384  # longer texts are checked every time, so the cache stays small

# GUCs that carry the identity: set only by the proxy, never by the client.
_PROTECTED_NAMES: Final = frozenset({"role", "session_authorization", "request.jwt", "rlsproxy"})
_PROTECTED_PREFIXES: Final = ("request.jwt.", "rlsproxy.")
# Functions that execute a query passed to them as text, by argument position and name.
_SQL_TEXT_FUNCTIONS: Final = {
    "query_to_xml": (0, "query"),
    "query_to_xmlschema": (0, "query"),
    "query_to_xml_and_xmlschema": (0, "query"),
    "ts_stat": (0, "query"),
    "ts_rewrite": (1, "select"),  # only the two-argument form runs SQL
}
# Languages with no SQL text to check. C and internal functions name compiled code; untrusted
# languages (the "u" ones) need superuser, which the login role's member roles never are. Any
# other language (plperl, pltcl, plv8, ...) may be trusted and can run SQL through SPI, which the
# guard cannot see: such bodies are refused as unanalysable.
_OPAQUE_LANGUAGES: Final = frozenset(
    {"c", "internal", "plpython3u", "plpythonu", "plpython2u", "plperlu", "pltclu"}
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the relay does with a query text: forward it, refuse it, or handle it itself."""

    action: Action
    rule: str | None = None  # bounded label for metrics, e.g. "set_role"
    sqlstate: str | None = None
    message: str | None = None
    hint: str | None = None
    position: int | None = None  # 1-based character position, as Postgres' P field
    in_band: InBand | None = None  # action "in_band": the identity switch the statement asks for
    # Where the text stands in a transaction (guard_fast.NO_CONTEXT, ENDS): for one statement its
    # own flow; for several, ENDS if the last one ends the context (no earlier one may).
    flow: int = 0
    leading: int = 0  # how many statements at its start need no context (the prefix goes after them)
    reapply: tuple[int, ...] = ()  # statements that need the context again (a COMMIT before them)


ALLOW: Final = Verdict("allow")
# Allowed texts of one statement that need no context, and those that end it too.
ALLOW_NO_CONTEXT: Final = Verdict("allow", flow=NO_CONTEXT, leading=1)
ALLOW_ENDS: Final = Verdict("allow", flow=NO_CONTEXT | ENDS, leading=1)
_ALLOW_BY_FLOW: Final = {0: ALLOW, NO_CONTEXT: ALLOW_NO_CONTEXT, NO_CONTEXT | ENDS: ALLOW_ENDS}
# Both run without the context; after DISCARD ALL (which cannot run in a transaction) it is owed.
_DISCARD_ALL: Final = Verdict("discard_all", flow=NO_CONTEXT | ENDS, leading=1)
_DEALLOCATE_ALL: Final = Verdict("deallocate_all", flow=NO_CONTEXT, leading=1)
# Allowed, but RESET ALL also resets the client's startup settings, which the proxy applied with
# set_config (a direct connection keeps startup-packet values as reset values): the relay re-applies them.
_RESET_ALL: Final = Verdict("reset_all", flow=NO_CONTEXT | ENDS, leading=1)


def is_reserved_statement_name(name: str) -> bool:
    """True for prepared statement/portal names the proxy keeps for itself (case-insensitive)."""
    return name[: len(RESERVED_NAME_PREFIX)].lower() == RESERVED_NAME_PREFIX


class Guard:
    """Classifies query texts, caching the verdict per exact text (oldest evicted first)."""

    def __init__(self, cache_size: int = 10_000) -> None:
        self._cache: OrderedDict[str, Verdict] = OrderedDict()  # FIFO: O(1) eviction
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def check(self, sql: str) -> Verdict:
        verdict = self._cache.get(sql)
        if verdict is not None:
            self.hits += 1
            return verdict
        self.misses += 1
        verdict = classify(sql)
        if self._cache_size > 0 and len(sql) <= _MAX_CACHED_TEXT:
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[sql] = verdict
        return verdict


def classify(sql: str, *, fast: bool = True) -> Verdict:
    """The verdict for one Query message text (uncached).

    With `fast`, plain DML is allowed from its tokens alone (guard_fast); a syntax error in such a
    text then comes from Postgres itself, with the same SQLSTATE, message and position.
    """
    if fast and plainly_allowed(sql):
        return _ALLOW_BY_FLOW[plain_flow(sql)]
    try:
        raws = parse(sql)
    except ParseError as exc:
        return _parse_error(sql, exc)
    if len(raws) == 1:
        stmt = raws[0].stmt
        if isinstance(stmt, ast.DiscardStmt) and stmt.target == enums.DiscardMode.DISCARD_ALL:
            return _DISCARD_ALL
        if isinstance(stmt, ast.DeallocateStmt) and stmt.isall:
            return _DEALLOCATE_ALL
    switch = recognise(raws[0].stmt) if raws else None
    if len(raws) == 1 and switch is not None:
        return Verdict("in_band", in_band=switch)
    if len(raws) > 1 and any(recognise(raw.stmt) is not None for raw in raws[1:]):
        return _refuse(
            "in_band_in_batch",
            "an in-band identity switch (rlsproxy.jwt) in a query string must be its first statement",
            "put the switch first: it applies to the statements after it",
            code=sqlstate.FEATURE_NOT_SUPPORTED,
        )
    for raw in raws[1:] if switch is not None else raws:
        stmt = raw.stmt
        verdict = _batch_refusal(stmt) if len(raws) > 1 else None
        verdict = verdict or _inspect(stmt, _statement_text(sql, raw), 0)
        if verdict is None and (label := needs_no_transaction(stmt)) is not None:
            verdict = _refuse(
                "needs_no_transaction",
                f"{label} cannot run through rlsproxy: every client statement runs inside a "
                "transaction carrying the RLS context",
                _HINT_MAINTENANCE,
                code=sqlstate.ACTIVE_SQL_TRANSACTION,
            )
        if verdict is not None:
            return verdict
    reset_all = any(
        isinstance(raw.stmt, ast.VariableSetStmt) and raw.stmt.kind == _VAR_RESET_ALL for raw in raws
    )
    if len(raws) <= 1:
        flow = statement_flow(raws[0].stmt, sql) if raws else 0
        if reset_all:
            return _RESET_ALL
        return _ALLOW_BY_FLOW.get(flow) or Verdict("allow", flow=flow, leading=int(flow & NO_CONTEXT != 0))
    several = _several(raws, sql, "reset_all" if reset_all else "allow")
    if switch is not None:  # first: it sets the context the statements after it run in
        return replace(several, action="in_band", in_band=switch)
    return several


def _several(raws: Any, sql: str, action: Action) -> Verdict:
    """Where the context goes in a text of several statements: after the leading ones that need
    none, and again before the first that needs it after each one that ends it (COMMIT; SELECT
    runs the SELECT in a new transaction, ROLLBACK TO SAVEPOINT undoes a context set after it).
    ATOMIC only where such a statement is not inside a block the same text opened (BEGIN; CALL)."""
    flows = [statement_flow(raw.stmt, _statement_text(sql, raw)) for raw in raws]
    atomic = 0
    in_block = False
    for raw, flow in zip(raws, flows, strict=True):
        stmt = raw.stmt
        if isinstance(stmt, ast.TransactionStmt):
            if stmt.kind in _STARTS:
                in_block = True
            elif stmt.kind in _CLOSES and not stmt.chain:
                in_block = False
        if flow & ATOMIC and not in_block:
            atomic = ATOMIC
    leading = next((i for i, flow in enumerate(flows) if not flow & NO_CONTEXT), len(flows))
    reapply: list[int] = []
    owed = leading == len(flows) and any(flow & ENDS for flow in flows)
    for index in range(leading, len(flows)):
        if owed and not flows[index] & NO_CONTEXT:
            reapply.append(index)
            owed = False
        owed = owed or flows[index] & ENDS != 0
    if action == "allow" and leading == 0 and not reapply and not owed and not atomic:
        return ALLOW
    return Verdict(action, flow=(ENDS if owed else 0) | atomic, leading=leading, reapply=tuple(reapply))


_VAR_RESET_ALL: Final = enums.VariableSetKind.VAR_RESET_ALL
_TRANS: Final = enums.TransactionStmtKind
_STARTS: Final = frozenset({_TRANS.TRANS_STMT_BEGIN, _TRANS.TRANS_STMT_START})
_WITHIN: Final = frozenset({_TRANS.TRANS_STMT_SAVEPOINT, _TRANS.TRANS_STMT_RELEASE})
_CLOSES: Final = frozenset({_TRANS.TRANS_STMT_COMMIT, _TRANS.TRANS_STMT_ROLLBACK, _TRANS.TRANS_STMT_PREPARE})


def statement_flow(stmt: Any, text: str = "") -> int:
    """Where one statement stands in a transaction (guard_fast.NO_CONTEXT, ENDS).

    SAVEPOINT and RELEASE need the context (set before the savepoint, a ROLLBACK TO keeps it);
    ROLLBACK TO SAVEPOINT ends it (a context set after the savepoint is undone with it).
    """
    if isinstance(stmt, ast.TransactionStmt):
        if stmt.kind in _STARTS:
            return NO_CONTEXT
        return 0 if stmt.kind in _WITHIN else NO_CONTEXT | ENDS
    if recognise(stmt) is not None:  # an in-band switch: it is the context (in_band.py)
        return NO_CONTEXT
    if isinstance(stmt, ast.CallStmt):
        return ATOMIC
    if isinstance(stmt, ast.DoStmt) and _do_language(stmt) == "plpgsql":
        return ATOMIC if controls_transactions(text) else 0
    if isinstance(stmt, ast.VariableSetStmt):  # SET TRANSACTION, SET LOCAL, RESET: no data read
        return NO_CONTEXT | ENDS if stmt.kind == _VAR_RESET_ALL else NO_CONTEXT
    return 0


# -- parsing ---------------------------------------------------------------------------------------


def _parse_error(sql: str, exc: ParseError) -> Verdict:
    message = str(exc.args[0]) if exc.args else "syntax error"
    if message.startswith("stack depth limit exceeded"):
        return Verdict("refuse", "too_complex", _STATEMENT_TOO_COMPLEX, message, "simplify the statement")
    index = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(index, int):
        position: int | None = index + 1  # pglast: 0-based character index; Postgres: 1-based
    elif "at end of input" in message:
        position = len(sql) + 1  # Postgres points just past the last character
    else:
        position = None
    return Verdict("refuse", "syntax", _SYNTAX_ERROR, message, None, position)


def _statement_text(sql: str, raw: Any) -> str:
    start, length = raw.stmt_location or 0, raw.stmt_len or 0
    return sql[start : start + length] if length else sql[start:]


# -- rules ---------------------------------------------------------------------------------------


def _refuse(rule: str, why: str, hint: str | None = None, *, code: str | None = None) -> Verdict:
    return Verdict("refuse", rule, code or sqlstate.INSUFFICIENT_PRIVILEGE, f"rlsproxy: {why}", hint)


def _unanalysable(what: str, reason: str) -> Verdict:
    return _refuse(
        "unanalysable_body",
        f"{what} cannot be analysed ({reason}): rlsproxy refuses SQL it cannot check",
        "use LANGUAGE sql or plpgsql with static SQL",
    )


def _batch_refusal(stmt: Any) -> Verdict | None:
    if isinstance(stmt, ast.DiscardStmt) and stmt.target == enums.DiscardMode.DISCARD_ALL:
        return _refuse(
            "discard_all_in_batch",
            "DISCARD ALL must be sent alone in its own query: rlsproxy resets the session itself",
            "send DISCARD ALL as a separate query",
            code=sqlstate.ACTIVE_SQL_TRANSACTION,
        )
    if isinstance(stmt, ast.DeallocateStmt) and stmt.isall:
        return _refuse(
            "deallocate_all_in_batch",
            "DEALLOCATE ALL must be sent alone in its own query: rlsproxy keeps its own statements",
            "send DEALLOCATE ALL as a separate query",
            code=sqlstate.ACTIVE_SQL_TRANSACTION,
        )
    return None


def _is_protected(name: str) -> bool:
    key = name.strip().lower()  # GUC names are case-insensitive
    return key in _PROTECTED_NAMES or key.startswith(_PROTECTED_PREFIXES)


@dataclass(frozen=True, slots=True)
class _Scope:
    root: Any  # the statement being inspected
    text: str  # its source text
    depth: int  # how many bodies deep


def _inspect(root: Any, text: str, depth: int) -> Verdict | None:
    """Apply the identity rules to every node of one statement."""
    scope = _Scope(root, text, depth)
    for node in _walk(root):
        handler = _HANDLERS.get(type(node))
        if handler is not None and (verdict := handler(node, scope)) is not None:
            return verdict
    return None


def _inspect_text(text: str, depth: int, what: str) -> Verdict | None:
    """Apply the identity rules to SQL embedded in a body or passed to a function as text."""
    if depth > _MAX_BODY_DEPTH:
        return _unanalysable(what, "bodies nested too deeply")
    try:
        raws = parse(text)
    except ParseError as exc:
        return _unanalysable(what, str(exc.args[0]) if exc.args else "parse error")
    for raw in raws:
        if (verdict := _inspect(raw.stmt, _statement_text(text, raw), depth)) is not None:
            return verdict
    return None


def _walk(root: Any) -> Iterator[Any]:
    pending: list[Any] = [root]
    while pending:
        item = pending.pop()
        if isinstance(item, ast.Node):
            yield item
            for member in item:
                value = getattr(item, member)
                if isinstance(value, ast.Node | tuple):
                    pending.append(value)
        elif isinstance(item, tuple):
            pending.extend(item)


def _variable_set(node: ast.VariableSetStmt, scope: _Scope) -> Verdict | None:
    name = node.name
    if name is not None and name.strip().lower() in pinned.PINNED:
        return _pinned_change(name, _set_value(node))
    if name is None or not _is_protected(name):
        return None  # RESET ALL, SET search_path, SET TRANSACTION ...
    key = name.strip().lower()
    if node is scope.root and key == "role":
        return _refuse(
            "set_role",
            "SET ROLE / RESET ROLE is not allowed: the role comes from the verified token",
            _HINT_IDENTITY,
        )
    if node is scope.root and key == "session_authorization":
        return _refuse(
            "session_authorization",
            "SET / RESET SESSION AUTHORIZATION is not allowed: the identity comes from the verified token",
            _HINT_IDENTITY,
        )
    return _refuse(
        "protected_setting",
        f'setting "{name[:64]}" is not allowed: rlsproxy sets it from the verified token',
        _HINT_IDENTITY,
    )


def _function_call(node: ast.FuncCall, scope: _Scope) -> Verdict | None:
    name = _string_value(node.funcname[-1]).lower() if node.funcname else ""
    if name == "set_config":
        setting = _string_constant(_argument(node, 0, "setting_name"))
        if setting is None:
            return _refuse(
                "dynamic_set_config",
                "set_config() with a computed setting name is not allowed: rlsproxy cannot check it",
                "pass the setting name as a string literal",
            )
        if setting.strip().lower() in pinned.PINNED:
            value = _string_constant(_argument(node, 1, "new_value"))
            if value is None:
                return _refuse(
                    "pinned_setting",
                    f"set_config() of {setting.strip().lower()} with a computed value is not allowed: "
                    "rlsproxy must know how PostgreSQL will read the next query texts",
                    pinned.HINT,
                    code=sqlstate.FEATURE_NOT_SUPPORTED,
                )
            return _pinned_change(setting, value)
        if _is_protected(setting):
            return _refuse(
                "protected_set_config",
                f'set_config() of "{setting[:64]}" is not allowed: rlsproxy sets it from the verified token',
                _HINT_IDENTITY,
            )
        return None
    where = _SQL_TEXT_FUNCTIONS.get(name)
    if where is None or (name == "ts_rewrite" and len(node.args or ()) != 2):
        return None
    query = _string_constant(_argument(node, *where))
    if query is None:
        return _refuse(
            "dynamic_sql_function",
            f"{name}() with a computed query is not allowed: rlsproxy cannot check the SQL it runs",
            "pass the query as a string literal",
        )
    return _inspect_text(query, scope.depth + 1, f"the query passed to {name}()")


def _pinned_change(name: str, value: str | None) -> Verdict | None:
    """A change of a setting that decides how Postgres reads a text (see wire/pinned.py)."""
    why: str | None
    if value == _UNREADABLE:
        why = f"{name.strip().lower()[:64]} can only be set to one plain value through rlsproxy"
    else:
        why = pinned.refusal(name, value)
    if why is None:
        return None
    return _refuse("pinned_setting", why, pinned.HINT, code=sqlstate.FEATURE_NOT_SUPPORTED)


_UNREADABLE: Final = "\0"  # a value the proxy cannot read as one text: refused (see _pinned_change)


def _set_value(node: ast.VariableSetStmt) -> str | None:
    """The value a SET gives, as text; None for RESET, DEFAULT and FROM CURRENT (the session's own)."""
    if node.kind != enums.VariableSetKind.VAR_SET_VALUE:
        return None
    args = node.args or ()
    if len(args) != 1 or not isinstance(args[0], ast.A_Const):
        return _UNREADABLE
    value = args[0].val
    if isinstance(value, ast.String):
        return value.sval or ""
    if isinstance(value, ast.Integer):
        return str(value.ival)
    if isinstance(value, ast.Float):
        return value.fval or ""
    if isinstance(value, ast.Boolean):
        return "true" if value.boolval else "false"
    return _UNREADABLE


def _settings_view_write(
    node: ast.UpdateStmt | ast.InsertStmt | ast.DeleteStmt | ast.MergeStmt, _: _Scope
) -> Verdict | None:
    """pg_settings is writable by everyone: its rule turns an UPDATE into set_config(name, value)."""
    relation = node.relation
    if relation is None or (relation.relname or "").lower() != "pg_settings":
        return None
    return _refuse(
        "pg_settings_write",
        "writing to pg_settings is not allowed: it changes settings as set_config() does",
        "use SET for the settings a client may change",
    )


def _do_language(node: ast.DoStmt) -> str:
    for option in node.args or ():
        if isinstance(option, ast.DefElem) and option.defname == "language":
            return _string_value(option.arg).lower()
    return "plpgsql"


def _body(node: ast.DoStmt | ast.CreateFunctionStmt, scope: _Scope) -> Verdict | None:
    if isinstance(node, ast.DoStmt):
        what, elements, default_language = "the DO block", node.args, "plpgsql"
    elif node.sql_body is not None:
        return None  # BEGIN ATOMIC / RETURN: already parsed, and walked as part of this statement
    else:
        what, elements, default_language = "the function body", node.options, None
    options = {o.defname: o.arg for o in elements or () if isinstance(o, ast.DefElem)}
    language = _string_value(options["language"]).lower() if "language" in options else default_language
    if node is not scope.root:
        return _unanalysable(what, "nested in another statement")
    if scope.depth >= _MAX_BODY_DEPTH:
        return _unanalysable(what, "bodies nested too deeply")
    if language == "sql":
        body = options.get("as")
        body = body[0] if isinstance(body, tuple) and len(body) == 1 else body
        if not isinstance(body, ast.String):
            return _unanalysable(what, "no single SQL body")
        return _inspect_text(body.sval or "", scope.depth + 1, what)
    if language == "plpgsql":
        try:
            texts = embedded_sql(scope.text)
        except DynamicExecute as exc:
            return _refuse(
                "plpgsql_dynamic_execute",
                f"{exc.construct} of dynamic SQL in PL/pgSQL is not allowed: rlsproxy cannot check it",
                "use static SQL statements in the body",
            )
        except (Unanalysable, RecursionError) as exc:
            return _unanalysable(what, exc.reason if isinstance(exc, Unanalysable) else "nested too deeply")
        for text in texts:
            if (verdict := _inspect_text(text, scope.depth + 1, what)) is not None:
                return verdict
        return None
    if language in _OPAQUE_LANGUAGES:
        return None  # see _OPAQUE_LANGUAGES: nothing to check, and clients' roles cannot use them
    return _unanalysable(what, f'language "{(language or "unspecified")[:64]}"')


def _statement_name(
    node: ast.PrepareStmt | ast.ExecuteStmt | ast.DeallocateStmt, _: _Scope
) -> Verdict | None:
    if isinstance(node, ast.DeallocateStmt) and node.isall:
        # Only reachable inside a body (top-level DEALLOCATE ALL is classified before the walk).
        return _refuse(
            "reserved_name",
            "DEALLOCATE ALL inside a function body is not allowed: it would drop rlsproxy's statements",
        )
    if node.name and is_reserved_statement_name(node.name):
        return _refuse(
            "reserved_name",
            f'prepared statement name "{node.name[:64]}" is reserved: names starting with '
            f"{RESERVED_NAME_PREFIX} belong to rlsproxy",
            "choose another statement name",
        )
    return None


def _function_reference(node: ast.DefElem | ast.ObjectWithArgs, _: _Scope) -> Verdict | None:
    """``CREATE AGGREGATE ... (SFUNC = set_config)``, ``CREATE OPERATOR ... (FUNCTION = ts_rewrite)``:
    a watched function bound to be called later with arguments the guard never sees."""
    if isinstance(node, ast.ObjectWithArgs):
        names = node.objname
    else:
        names = node.arg.names if isinstance(node.arg, ast.TypeName) else (node.arg,)
    name = _string_value(names[-1]).strip().lower() if names else ""
    if name != "set_config" and name not in _SQL_TEXT_FUNCTIONS:
        return None
    return _refuse(
        "dynamic_set_config" if name == "set_config" else "dynamic_sql_function",
        f"referring to {name}() other than by calling it is not allowed: rlsproxy cannot check its arguments",
    )


_HANDLERS: Final[dict[type, Callable[[Any, _Scope], Verdict | None]]] = {
    ast.VariableSetStmt: _variable_set,
    ast.FuncCall: _function_call,
    ast.DoStmt: _body,
    ast.CreateFunctionStmt: _body,
    ast.PrepareStmt: _statement_name,
    ast.ExecuteStmt: _statement_name,
    ast.DeallocateStmt: _statement_name,
    ast.DefElem: _function_reference,
    ast.ObjectWithArgs: _function_reference,
    ast.UpdateStmt: _settings_view_write,
    ast.InsertStmt: _settings_view_write,
    ast.DeleteStmt: _settings_view_write,
    ast.MergeStmt: _settings_view_write,
}


def _argument(call: ast.FuncCall, index: int, name: str) -> Any:
    """The argument bound to parameter ``index``/``name``, or None if it cannot be told."""
    if call.func_variadic:
        return None
    args = call.args or ()
    positional = [a for a in args if not isinstance(a, ast.NamedArgExpr)]
    if len(positional) > index:
        return positional[index]
    for arg in args:
        if isinstance(arg, ast.NamedArgExpr) and (arg.name or "").lower() == name:
            return arg.arg
    return None


def _string_constant(node: Any) -> str | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval or ""
    return None


def _string_value(node: Any) -> str:
    return (node.sval or "") if isinstance(node, ast.String) else ""
