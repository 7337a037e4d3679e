"""The client side of a session: what the client sends, checked and framed for the server.

`Relay.feed_client` is the client-to-server hot path. Per message it reads the header; it decodes
only Query and Parse (SQL for the guard, one dict lookup per distinct text) and the statement names
of Bind/Describe/Close. Everything else is forwarded as slices of the received buffer.

Transactions: when the client starts a batch (its first message after a Sync or Query) and the
server may be outside a transaction, the context prefix goes first. Postgres runs the prefix and
the client's messages up to the Sync in one implicit transaction (or in the explicit one the client
opens), so the context applies exactly to the client's transaction and ends with it.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from rlsproxy.errors import ProtocolViolation, ProxyError
from rlsproxy.session import context
from rlsproxy.session.expected import CLIENT, PREFIX_ENTRY, Pending
from rlsproxy.session.guard import RESERVED_NAME_PREFIX, Guard, Verdict
from rlsproxy.session.guard_fast import ATOMIC, ENDS, NO_CONTEXT, plain_flow, plain_text_allows
from rlsproxy.session.in_band import SET_CONFIG_SQL, SET_SQL, InBand, payload
from rlsproxy.session.server import VIEW_AT, Chunks, ServerState, Slice
from rlsproxy.session.simple import (
    DESCRIBE_UNNAMED_PORTAL,
    PARSE_TAIL_SYNC,
    Translation,
    decode_sql,
    parse_head,
    single_statement,
    translate,
    whole,
)
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.framing import STREAM_AT, Carry

_HEADER: Final = struct.Struct("!BI")  # message type, length (which counts itself, not the type byte)
_FORWARD_ONLY: Final = frozenset((codes.FLUSH,))
_BODY_NOT_EMPTY: Final = "malformed %s message: it has no body"
_EXTENDED: Final = frozenset((codes.PARSE, codes.BIND, codes.DESCRIBE, codes.CLOSE))
_PORTAL: Final = ord("P")
# Portal flow bits beyond guard_fast's: an in-band SET or RESET, whose CommandComplete is replaced.
_TAG_SET: Final = 16
_TAG_RESET: Final = 32
_TAGS: Final = _TAG_SET | _TAG_RESET
_STATEMENT: Final = ord("S")
# _forwards_unchanged's answer for a Describe or Close: no statement, so no context needed before it.
_NOT_A_STATEMENT: Final = 256
_RESERVED: Final = RESERVED_NAME_PREFIX.encode()
_POSTGRES_LARGEST: Final = 0x3FFFFFFF  # Postgres refuses longer Bind and COPY data (PQ_LARGE_MESSAGE_LIMIT)
_LITERAL_CHARS: Final = b"0123456789'$"  # what numbers, strings and dollar quotes are made of
_LOWER_R: Final = _RESERVED[0]  # a name whose first byte is not r or R (byte | 0x20) is not reserved


def _reserved(name: bytes) -> bool:
    """A prepared statement name the proxy keeps for itself (case-insensitive, as the guard's)."""
    return name[: len(_RESERVED)].lower() == _RESERVED


_COPY_MESSAGES: Final = frozenset((codes.COPY_DATA, codes.COPY_DONE, codes.COPY_FAIL))
# Allowed by the plain-text check (guard_fast): one statement of plain DML or transaction control,
# so never a COPY and never split. The relay sends it without building a Translation.
PLAIN: Final = Verdict("allow")
PLAIN_NO_CONTEXT: Final = Verdict("allow", flow=NO_CONTEXT, leading=1)  # BEGIN, START TRANSACTION
PLAIN_ENDS: Final = Verdict("allow", flow=NO_CONTEXT | ENDS, leading=1)  # COMMIT, ROLLBACK, END, ABORT
_PLAIN_BY_FLOW: Final = {0: PLAIN, NO_CONTEXT: PLAIN_NO_CONTEXT, NO_CONTEXT | ENDS: PLAIN_ENDS}


class Classifier:
    """The guard's verdicts keyed by the raw SQL bytes, so a repeated statement costs one lookup.

    A simple Query's text often carries its values as literals, so it is new each time: for those,
    what is cheap to decide again is not kept (a text the plain-text check allows, about half a
    microsecond, if it has digits or quotes, and a single statement's translation). Caching them
    cost more than it saved, and a flood of such one-off texts evicted the verdicts worth keeping
    (a full parse is 50-400 µs). Texts without literal values (BEGIN, COMMIT, ...) come again and
    are kept. A Parse's text has placeholders instead and comes again: every verdict is kept.
    FIFO-bounded OrderedDicts: popping a plain dict's oldest key (next(iter(d))) walks the slots
    freed by earlier pops, microseconds per statement when every text is new.
    """

    def __init__(self, guard: Guard, max_entries: int = 10_000) -> None:
        self._guard = guard
        self._cache: OrderedDict[bytes, Verdict] = OrderedDict()
        self._translations: OrderedDict[bytes, Translation] = OrderedDict()
        self._max = max_entries

    def query_verdict(self, sql: bytes) -> Verdict:
        """The verdict for a simple Query's text."""
        found = self._cache.get(sql)
        if found is not None:
            return found
        text = decode_sql(sql)[0]
        if plain_text_allows(text):
            plain = _PLAIN_BY_FLOW[plain_flow(text)]
            if len(sql.translate(None, _LITERAL_CHARS)) == len(sql):  # no values in it: comes again
                self._keep(sql, plain)
            return plain
        return self._decide(sql, text)

    def verdict(self, sql: bytes) -> Verdict:
        """The verdict for a Parse's text."""
        found = self._cache.get(sql)
        if found is not None:
            return found
        return self._decide(sql, decode_sql(sql)[0])

    def _decide(self, sql: bytes, text: str) -> Verdict:
        result = self._guard.check(text)
        self._keep(sql, result)
        return result

    def _keep(self, sql: bytes, verdict: Verdict) -> None:
        if len(self._cache) >= self._max:
            self._cache.popitem(last=False)
        self._cache[sql] = verdict

    def translation(self, sql: bytes) -> Translation:
        if single_statement(sql):
            return whole(sql)
        found = self._translations.get(sql)
        if found is None:
            found = translate(sql)
            if len(self._translations) >= self._max:
                self._translations.popitem(last=False)
            self._translations[sql] = found
        return found


def refusal_error(verdict: Verdict) -> bytes:
    return be.error_response(
        verdict.sqlstate or sqlstate.INSUFFICIENT_PRIVILEGE,
        verdict.message or "rlsproxy: statement refused",
        hint=verdict.hint,
        position=verdict.position,
    )


FUNCTION_CALL_REFUSED: Final = be.error_response(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "rlsproxy: the FunctionCall protocol message is not allowed",
    hint="call the function with a SELECT statement instead",
)
COPY_NOT_LAST_REFUSED: Final = be.error_response(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "rlsproxy: COPY FROM STDIN must be the last statement of a multi-statement query",
    hint="send the COPY as a query of its own",
)
AFTER_END_IN_PIPELINE: Final = be.error_response(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "rlsproxy: a query with statements after COMMIT or ROLLBACK cannot follow unsynced extended-protocol "
    "messages: the proxy could not give those statements their RLS context",
    hint="send a Sync before the query, or send the statements after the COMMIT as a query of their own",
)
IN_BAND_DISABLED: Final = be.error_response(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "rlsproxy: in-band identity switching is disabled (jwt.in_band: false)",
    hint="connect with the token in the startup packet instead",
)
NEEDS_BLOCK: Final = be.error_response(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "rlsproxy: CALL (and a DO block with COMMIT, ROLLBACK or CALL) runs only inside a transaction "
    "block: a COMMIT in the procedure would run the rest of it without the RLS context",
    hint="send BEGIN first (in a query of its own, or in the same query string before it)",
)
IN_BAND_AFTER_UNSYNCED: Final = be.error_response(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "rlsproxy: an in-band identity switch in a simple query cannot follow unsynced "
    "extended-protocol messages",
    hint="send a Sync first, or switch with SELECT set_config('rlsproxy.jwt', $1, true) "
    "in the extended protocol",
)
IN_BAND_NO_PARAMETER: Final = be.error_response(
    sqlstate.UNDEFINED_PARAMETER, "there is no parameter $1", position=1
)
# token -> (role, claims_json) of the identity it may switch to ("" = the startup identity);
# raises ProxyError (28000 bad token, 42501 not allowed in-band). Supplied by the edge.
InBandCheck = Callable[[str], tuple[str, str]]

# The proxy's in-band statements (see Relay._in_band_statements): reserved names.
_EMPTY_UNNAMED_PARSE: Final = fe.parse("", "")
_QUERY_SWITCH: Final = RESERVED_NAME_PREFIX + "ib_query"  # the simple protocol's switch statement


def _close_statement(name: bytes) -> bytes:
    return be.message(codes.CLOSE, b"S" + name + b"\0")


# Closed first: it may exist from an earlier switch (closing a missing statement is no error).
_QUERY_SWITCH_HEAD: Final = _close_statement(_QUERY_SWITCH.encode())


def _parse_query_switch(sql: str) -> bytes:
    return fe.parse(_QUERY_SWITCH, sql)


def _already_exists(name: bytes) -> bytes:
    shown = name[:64].decode(errors="replace")
    return be.error_response(
        sqlstate.DUPLICATE_PREPARED_STATEMENT, f'prepared statement "{shown}" already exists'
    )


RESERVED_NAME_REFUSED: Final = be.error_response(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    'rlsproxy: prepared statement names starting with "rlsproxy_" are reserved for the proxy',
)


class Relay:
    """Client-side state of one session; attach it to a server connection to relay."""

    def __init__(
        self,
        prefix: context.Prefix,
        classifier: Classifier,
        *,
        max_message: int,
        on_refusal: Callable[[str], None] | None = None,
        on_statement: Callable[[bytes], None] | None = None,
        restore: bytes = b"",
        in_band: InBandCheck | None = None,
    ) -> None:
        self.prefix = prefix  # context_prefix() of the current identity
        self.server: ServerState | None = None
        self.terminated = False
        self.statements = 0
        self.transactions = 0
        self._classifier = classifier
        self._max = max_message
        self._on_refusal = on_refusal
        # Audited (service) sessions only: called with the SQL of every statement about to run, before
        # it is forwarded; it may raise to stop the session (the audit trail failed: fail closed).
        self._on_statement = on_statement
        self._statement_sql: dict[bytes, bytes] = {}  # prepared statement name -> SQL (audited only)
        self._portal_sql: dict[bytes, bytes] = {}  # portal name -> SQL (audited only)
        # The proxy's own exchange that re-applies the client's startup settings (ends with Sync);
        # sent after a batch with RESET ALL or DISCARD ALL, which reset them to the server defaults.
        self._restore = restore
        self._restore_after_sync = False
        self._in_band = in_band
        # The client's in-band statements: its name -> (the switch, the proxy's statement that does
        # it). The proxy's statement sets role and claims from its parameter, so it exists only under
        # a reserved name (rlsproxy_ib_N) that no client message or SQL can name; the client's name
        # never exists on the server with it. Binds carry the token and are rewritten to bind the
        # proxy's statement with the verified payload; Describe and Close are pointed at it.
        self._in_band_statements: dict[bytes, tuple[InBand, bytes]] = {}
        self._switched = False  # an in-band switch was sent: later prefixes may need to keep one
        # The transaction going on (or the next one) has no context yet: its statements so far
        # needed none (BEGIN, SET TRANSACTION: guard_fast.NO_CONTEXT), or the last one ended it
        # (COMMIT AND CHAIN, ROLLBACK TO SAVEPOINT, RESET ALL: ENDS). The next statement that needs
        # it gets the prefix first, at the start of its batch or inside it (Pending.inject_at).
        self._owed = False
        # Flows (guard_fast.NO_CONTEXT, ENDS) of the client's prepared statements and portals that
        # have one; most sessions have none, and then Binds and Executes are not looked up.
        self._flows: dict[bytes, int] = {}
        self._portal_flows: dict[bytes, int] = {}
        # The same for the unnamed statement and portal, which most clients use for everything
        # (BEGIN and COMMIT too): fields, kept on the fast path, not dictionary entries.
        self._unnamed_flow = 0
        self._unnamed_portal_flow = 0
        # Replies the client's Parse/Bind/Describe/Close since its last Execute in the open batch
        # will get: a prefix put in before the next Execute comes after them (Pending.inject_skip).
        self._since_execute = 0
        self._in_block = False  # the open batch began inside an explicit transaction block
        self._carry: Carry | None = None  # what the last read left: see wire.framing.Carry
        self._open: Pending | None = None  # the client batch not yet ended by Sync/Query
        self._syncs_after_execute = 0
        self._copy_in = False
        self._copy_entry: Pending | None = None  # a COPY FROM STDIN Query whose Sync waits for CopyDone

    # -- attachment -------------------------------------------------------------------------
    def attach(self, server: ServerState) -> None:
        self.server = server

    def detach(self) -> ServerState | None:
        server, self.server = self.server, None
        return server

    @property
    def busy(self) -> bool:
        """In the middle of COPY FROM STDIN: the server connection cannot be reset and reused."""
        return self._copy_in

    # -- server to client ---------------------------------------------------------------------
    def feed_server(self, data: bytes, to_client: Chunks, to_server: Chunks) -> None:
        assert self.server is not None
        self.server.receive(data, to_client, to_server)

    # -- client to server ---------------------------------------------------------------------
    def feed_client(self, data: bytes, to_server: Chunks, to_client: Chunks) -> None:
        server = self.server
        assert server is not None
        pos = fwd = 0
        if self._carry is not None:  # the rest of a large message, or of one kept from the last read
            resumed = self._carry.resume(data, to_server)
            if resumed is None:
                return
            self._carry = None
            data, pos = resumed
        n = len(data)
        view = memoryview(data) if n >= VIEW_AT else data  # see VIEW_AT
        header = _HEADER.unpack_from
        largest = self._max - 1
        t: int  # declared: compiled (setup.py), the comparisons below are then on machine integers
        length: int
        while n - pos >= 5:
            t, length = header(data, pos)
            end = pos + 1 + length
            if length > fe.SMALL_MESSAGE_LIMIT and t not in fe.LARGE_TYPES:  # refused at its header
                raise ProtocolViolation(fe.header_error(t, length))
            if length < 4 or length > largest:
                self._check_length(t, length, data, pos, min(end, n))
            if end > n:
                if t not in fe.KNOWN_TYPES:  # as Postgres: refused before its body (a whole one: below)
                    raise ProtocolViolation(fe.header_error(t, length))
                # Large COPY data, or a large Bind whose names (at its start) show it goes unchanged:
                # pass on what came, not wait for all of it.
                if length >= STREAM_AT:
                    if t == codes.COPY_DATA:
                        if not self._copy_in:
                            self._copy_started(server)
                        self._carry = Carry(passing=end - n)
                        pos = n
                    elif t == codes.BIND and self._forwards_unchanged(t, data, pos, n) >= 0:
                        if self._open is None:
                            fwd = self._flush(view, fwd, pos, to_server)
                            self._open_batch(server, to_server, context=True)
                        self._carry = Carry(passing=end - n)
                        pos = n
                break
            if t == codes.QUERY:
                fwd = self._flush(view, fwd, pos, to_server)
                self._query(server, data[pos + 5 : end], view[pos:end], to_server)
                fwd = end
            elif t in _EXTENDED:  # Parse, Bind, Describe, Close: most of an extended batch
                flow = self._forwards_unchanged(t, data, pos, end)
                if flow >= 0:
                    # Part of the run forwarded as one slice; a new batch still gets its prefix first.
                    if self._open is None:
                        fwd = self._flush(view, fwd, pos, to_server)
                        self._open_batch(server, to_server, context=True, leads=flow & NO_CONTEXT != 0)
                    elif self._owed and not flow & (NO_CONTEXT | _NOT_A_STATEMENT):
                        # A statement that needs the context: Postgres analyses it at Parse and plans
                        # it at Bind as the role in force then, so the context goes before both.
                        fwd = self._flush(view, fwd, pos, to_server)
                        to_server.append(self._inject(server, self._open))
                else:
                    fwd = self._flush(view, fwd, pos, to_server)
                    self._extended(server, t, data[pos + 5 : end], view[pos:end], to_server)
                    fwd = end
                # A statement's Describe gets two replies (parameters, then row or NoData).
                self._since_execute += (
                    2 if t == codes.DESCRIBE and end > pos + 5 and data[pos + 5] == _STATEMENT else 1
                )
            elif t == codes.EXECUTE:
                if end > pos + 5 and data[pos + 5] == 0:  # the unnamed portal
                    flow = self._unnamed_portal_flow
                elif self._portal_flows:
                    nul = data.find(0, pos + 5, end)
                    flow = self._portal_flows.get(data[pos + 5 : nul], 0) if nul > 0 else 0
                else:
                    flow = 0
                if flow & ATOMIC and not (
                    self._in_block if self._open is not None else self._surely_in_block(server)
                ):
                    fwd = self._flush(view, fwd, pos, to_server)
                    self._refuse_extended(server, "needs_transaction_block", NEEDS_BLOCK, to_server)
                    fwd = pos = end
                    continue
                if self._open is None:
                    fwd = self._flush(view, fwd, pos, to_server)
                    self._open_batch(server, to_server, context=True, leads=flow & NO_CONTEXT != 0)
                elif self._owed and not flow & NO_CONTEXT:
                    fwd = self._flush(view, fwd, pos, to_server)
                    to_server.append(self._inject(server, self._open))
                batch = self._open
                assert batch is not None
                if flow & _TAGS:
                    batch.retag(batch.executes, b"SET" if flow & _TAG_SET else b"RESET")
                batch.executes += 1
                self._since_execute = 0
                if flow & ENDS:
                    self._owed = True
                    self._in_block = False
                self._syncs_after_execute = 0
                self.statements += 1
                if self._on_statement is not None:
                    nul = data.find(0, pos + 5, end)
                    self._on_statement(self._portal_sql.get(data[pos + 5 : nul], b"") if nul > 0 else b"")
            elif t == codes.SYNC:
                if length != 4:
                    raise ProtocolViolation(_BODY_NOT_EMPTY % "Sync")
                self._end_batch(server)
                self._syncs_after_execute += 1
                if self._restore_after_sync:
                    self._restore_after_sync = False
                    fwd = self._flush(view, fwd, end, to_server)
                    to_server.append(server.internal(self._restore))
            elif t in _COPY_MESSAGES:
                if not self._copy_in:
                    self._copy_started(server)
                if t != codes.COPY_DATA:
                    self._copy_in = False
                    entry, self._copy_entry = self._copy_entry, None
                    if entry is not None and entry.deferred_sync:
                        entry.deferred_sync = False
                        fwd = self._flush(view, fwd, end, to_server)
                        to_server.append(fe.SYNC)
            elif t in _FORWARD_ONLY:
                if length != 4:  # Postgres fails it and skips to Sync: the proxy could not follow
                    raise ProtocolViolation(_BODY_NOT_EMPTY % "Flush")
            elif t == codes.FUNCTION_CALL:
                fwd = self._flush(view, fwd, pos, to_server)
                self._refuse_query(server, "function_call", FUNCTION_CALL_REFUSED, to_server)
                fwd = end
            elif t == codes.TERMINATE:
                self._flush(view, fwd, pos, to_server)
                self.terminated = True
                return
            else:
                raise ProtocolViolation(f"invalid frontend message type {t}")
            pos = end
        self._flush(view, fwd, pos, to_server)
        if pos < n:
            self._carry = Carry(kept=view[pos:])

    def _check_length(self, t: int, length: int, data: bytes, pos: int, stop: int) -> None:
        """A length below 4 is never valid. Above the limit (limits.max_message_bytes), only what is
        passed on read by read, never held whole, may go: COPY data and a Bind that goes unchanged,
        up to Postgres' own limit (1 GB)."""
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        passes = t == codes.COPY_DATA or (
            t == codes.BIND and self._forwards_unchanged(t, data, pos, stop) >= 0
        )
        if not passes or length > _POSTGRES_LARGEST:
            raise ProtocolViolation(
                f"a message of {length + 1} bytes is larger than the proxy's limit of {self._max} "
                "(limits.max_message_bytes)"
            )

    @staticmethod
    def _flush(view: Slice, fwd: int, pos: int, to_server: Chunks) -> int:
        if fwd < pos:
            to_server.append(view[fwd:pos])
        return pos

    # -- batches ------------------------------------------------------------------------------
    def _open_batch(
        self, server: ServerState, to_server: Chunks, *, context: bool, leads: bool = False
    ) -> Pending:
        """Start a client batch; put the context prefix first unless surely inside a transaction
        that has it, or unless the batch `leads` with a statement that needs no context (then the
        context is owed to the first one that does).

        Returns the batch's entry (also `self._open`).
        """
        # Surely in a transaction block before this batch (see the ATOMIC check; inlined, per batch).
        self._in_block = server.tx_status == codes.TX_IN_BLOCK and not server.pending
        needed = context and (self._owed or self._may_be_idle(server))
        prefixed = needed and not leads
        if needed and leads:
            self._owed = True
        if prefixed:
            self._owed = False
            # Once the session has switched in-band: the statement that keeps a switch made in this
            # transaction and fails while state from another identity is held (context.KEEPING_SQL).
            to_server.append(server.context_messages(self.prefix, keeping=self._switched))
            server.pending.append(PREFIX_ENTRY)
            self.transactions += 1
        entry = self._open = Pending(CLIENT)
        server.pending.append(entry)
        self._since_execute = 0
        return entry

    def _inject(self, server: ServerState, entry: Pending, position: int = -1) -> bytes:
        """The context prefix inside a client batch, after the client's `position` statements of a
        Query, or (default) where the client's messages have reached: the server side drops its
        replies (Pending.inject_at)."""
        if position < 0:
            entry.inject(entry.executes, self._since_execute)
        else:
            entry.inject(position, 0)
        self._owed = False
        self.transactions += 1
        return server.context_messages(self.prefix, keeping=self._switched, inside=True)

    def _end_batch(self, server: ServerState) -> None:
        if self._open is not None:
            self._open.closed = True
            self._open = None
        else:
            server.pending.append(Pending(CLIENT, closed=True))

    def _query(self, server: ServerState, body: bytes, raw: Slice, to_server: Chunks) -> None:
        # A Query replaces the unnamed statement and portal (here with its translation's, whose
        # flows are not noted): a later Bind of them is taken to need the context.
        self._unnamed_flow = self._unnamed_portal_flow = 0
        sql = fe.query_text(body)
        verdict = self._classifier.query_verdict(sql)
        action = verdict.action
        if action == "refuse":
            self._refuse_query(server, verdict.rule or "refused", refusal_error(verdict), to_server)
            return
        self._syncs_after_execute = 0
        self.statements += 1
        if action == "in_band":
            self._in_band_query(server, sql, verdict, to_server)
            return
        if verdict.flow & ATOMIC and not self._surely_in_block(server):
            self._refuse_query(server, "needs_transaction_block", NEEDS_BLOCK, to_server)
            return
        if self._on_statement is not None:
            self._on_statement(sql)
        # DISCARD ALL must run outside any transaction, so it goes without the prefix; it runs
        # as the login role, which can read nothing. It also drops the context statement.
        if (
            self._open is None
            and action != "discard_all"
            and (self._owed or verdict.reapply or self._may_be_idle(server))
        ):
            self._query_in_new_transaction(server, sql, verdict, to_server)
        elif self._open is not None and verdict.reapply:
            self._refuse_query(server, "statement_after_transaction_end", AFTER_END_IN_PIPELINE, to_server)
            return
        else:
            # Inside the client's transaction, which has its context (or DISCARD ALL, or behind
            # unsynced messages of the client's): the Query goes as it came.
            entry = self._open or self._open_batch(server, to_server, context=False)
            if self._owed and verdict.leading == 0:
                to_server.append(self._inject(server, entry))
            to_server.append(raw)
            entry.needs_sync = True
            if entry.prefix_failed:  # Postgres is skipping to a Sync and the client sends none
                to_server.append(fe.SYNC)
            self._end_batch(server)
        if verdict.flow & ENDS:
            self._owed = True
        if action in ("discard_all", "deallocate_all"):
            self._forget_statements(server)
        if self._restore and action in ("discard_all", "reset_all"):
            to_server.append(server.internal(self._restore))

    def _query_in_new_transaction(
        self, server: ServerState, sql: bytes, verdict: Verdict, to_server: Chunks
    ) -> None:
        """[Prefix +] the Query as extended messages + Sync (see simple.py for why). A plain text
        (one statement, never a COPY) is written around its SQL, no Translation built. The prefix
        goes before the first statement that needs a context: after a leading BEGIN ISOLATION
        LEVEL or SET TRANSACTION, whose snapshot rules it would break, and not at all before a
        ROLLBACK of a failed transaction."""
        plain = verdict is PLAIN or verdict is PLAIN_NO_CONTEXT or verdict is PLAIN_ENDS
        translation = None if plain else self._classifier.translation(sql)
        if translation is not None and translation.copy_not_last:
            self._refuse_query(server, "copy_not_last", COPY_NOT_LAST_REFUSED, to_server)
            return
        leading = verdict.leading
        entry = self._open_batch(server, to_server, context=True, leads=leading > 0)
        entry.translated = entry.watch = True
        if translation is None:
            to_server += (parse_head(len(sql)), sql, PARSE_TAIL_SYNC)
        else:
            entry.offsets = translation.offsets
            # The prefix goes after the statements that need no context, and again after a COMMIT
            # (or ROLLBACK TO SAVEPOINT, ...) before the next statement that needs it.
            positions = verdict.reapply
            if self._owed and translation.starts is not None and leading < len(translation.starts):
                positions = (leading, *positions)
            to_server += self._spliced(server, entry, translation, positions)
            if translation.copy_in:
                entry.deferred_sync = True
                self._copy_entry = entry
            else:
                to_server.append(fe.SYNC)
        self._end_batch(server)

    def _spliced(
        self,
        server: ServerState,
        entry: Pending,
        translation: Translation,
        positions: tuple[int, ...],
        first: bytes | None = None,
    ) -> Chunks:
        """A translation's messages with the context prefix before the statements at `positions`,
        and `first` in place of the first statement's messages when given."""
        messages, starts = translation.messages, translation.starts
        if starts is None:
            return [messages if first is None else first]
        chunks: Chunks = []
        cut = 0
        if first is not None:
            chunks.append(first)
            cut = starts[1]
        for position in positions:
            chunks += (messages[cut : starts[position]], self._inject(server, entry, position))
            cut = starts[position]
        chunks.append(messages[cut:])
        return chunks

    # -- in-band identity ---------------------------------------------------------------------
    def _switch(self, switch: InBand, token: str) -> tuple[str, str]:
        """Verify the token (ProxyError if refused); a session-scope switch also changes later prefixes.

        The switch sets role and claims for the transaction: it is the transaction's context, so
        none is owed any more (a prefix after it would have to keep it: context.KEEPING_SQL)."""
        assert self._in_band is not None
        role, claims = self._in_band("" if switch.form == "reset" else token)
        self._switched = True
        self._owed = False
        if not switch.local:
            self.prefix = context.context_prefix(role, claims)
        return role, claims

    def _in_band_query(self, server: ServerState, sql: bytes, verdict: Verdict, to_server: Chunks) -> None:
        """Simple protocol: the proxy's own statement, translated, with the reply the client expects;
        statements after it in the same query string run in the transaction it switched."""
        switch = verdict.in_band
        assert switch is not None
        if self._in_band is None:
            self._refuse_query(server, "in_band_disabled", IN_BAND_DISABLED, to_server)
            return
        if switch.param is not None:
            self._refuse_query(server, "in_band_unsupported", IN_BAND_NO_PARAMETER, to_server)
            return
        if self._open is not None:  # behind unsynced extended messages: not one transaction with them
            self._refuse_query(server, "in_band_unsupported", IN_BAND_AFTER_UNSYNCED, to_server)
            return
        translation = None if single_statement(sql) else self._classifier.translation(sql)
        if translation is not None and translation.copy_not_last:
            self._refuse_query(server, "copy_not_last", COPY_NOT_LAST_REFUSED, to_server)
            return
        token = switch.literal or ""
        try:
            role, claims = self._switch(switch, token)
        except ProxyError as exc:
            error = be.error_response(exc.sqlstate, exc.message, hint=exc.hint)
            self._refuse_query(server, "in_band_token", error, to_server)
            return
        value = (payload(role, claims, token),)
        # Under a reserved name, never the unnamed statement, which a client's Bind could reach.
        if switch.form == "set_config":
            messages = _QUERY_SWITCH_HEAD + _parse_query_switch(SET_CONFIG_SQL)
            messages += fe.bind(_QUERY_SWITCH, value) + DESCRIBE_UNNAMED_PORTAL
        else:
            messages = _QUERY_SWITCH_HEAD + _parse_query_switch(SET_SQL) + fe.bind(_QUERY_SWITCH, value)
        messages += fe.execute()
        entry = self._open_batch(server, to_server, context=False)
        entry.translated = entry.watch = True
        # Shown if Postgres finds state held (in_band.HELD_STATE).
        entry.replacement = context.HELD_STATE_REFUSED
        tag = switch.tag
        if tag is not None:
            entry.retag(0, tag)
        if translation is None:
            to_server.append(messages + fe.SYNC)
        else:
            entry.offsets = translation.offsets
            to_server += self._spliced(server, entry, translation, verdict.reapply, first=messages)
            if translation.copy_in:
                entry.deferred_sync = True
                self._copy_entry = entry
            else:
                to_server.append(fe.SYNC)
        self._end_batch(server)

    def _in_band_parse(
        self, server: ServerState, name: bytes, switch: InBand, body: bytes, to_server: Chunks
    ) -> None:
        if self._in_band is None:
            self._refuse_extended(server, "in_band_disabled", IN_BAND_DISABLED, to_server)
            return
        if name and name in self._in_band_statements:
            self._refuse_extended(server, "statement_exists", _already_exists(name), to_server)
            return
        entry = self._open or self._open_batch(
            server, to_server, context=True, leads=True
        )  # the switch is the transaction's context: no prefix before it
        # Same parameter type as the client declared for its $1 (a literal token has none).
        types = fe.parse_param_types(body)[:1] if switch.param is not None else ()
        sql = SET_CONFIG_SQL if switch.form == "set_config" else SET_SQL
        if name:  # the client may keep it as long as it likes: a statement of its own
            server_name = server.switch_name()
        else:  # replaced at every Parse: one statement per shape serves them all
            server_name = server.switch_statements.get((sql, types), b"")
            if server_name:
                # Exists: the client's Parse still needs its ParseComplete, and its unnamed statement
                # replaced, as Postgres would replace it (by an empty one: Binds of it are rewritten).
                self._in_band_statements[name] = (switch, server_name)
                to_server.append(_EMPTY_UNNAMED_PARSE)
                return
            server_name = server.switch_name()
            server.switch_statements[(sql, types)] = server_name
            entry.creates = entry.watch = True  # an error in this batch: unsure it was prepared
        self._in_band_statements[name] = (switch, server_name)
        to_server.append(fe.parse(server_name.decode(), sql, types))

    def _statement_flow(self, name: bytes) -> int:
        if not name:
            return self._unnamed_flow
        return self._flows.get(name, 0) if self._flows else 0

    def _note_portal(self, portal: bytes, flow: int) -> None:
        """The flow of the statement a portal was bound to (read at its Execute)."""
        if not portal:
            self._unnamed_portal_flow = flow
        elif flow:
            self._portal_flows[portal] = flow
        elif self._portal_flows:
            self._portal_flows.pop(portal, None)

    def _forget_statements(self, server: ServerState) -> None:
        """DISCARD ALL or DEALLOCATE ALL: every prepared statement is gone, the proxy's too."""
        server.forget_context()
        self._in_band_statements.clear()
        self._flows.clear()
        self._portal_flows.clear()
        self._unnamed_flow = self._unnamed_portal_flow = 0

    def _in_band_bind(
        self, server: ServerState, switch: InBand, server_name: bytes, body: bytes, to_server: Chunks
    ) -> None:
        parts = fe.bind_parts(body)
        if switch.param is not None:
            raw = parts.params[0] if parts.params else None
            token = raw.decode(errors="replace") if raw is not None else ""
        else:
            token = switch.literal or ""
        if self._open is None:
            self._open_batch(server, to_server, context=True, leads=True)
        try:
            role, claims = self._switch(switch, token)
        except ProxyError as exc:
            error = be.error_response(exc.sqlstate, exc.message, hint=exc.hint)
            self._refuse_extended(server, "in_band_token", error, to_server)
            return
        value = payload(role, claims, token).encode()
        bind = parts._replace(statement=server_name, param_formats=(), params=(value,))
        to_server.append(fe.build_bind(bind))
        entry = self._open
        assert entry is not None
        if entry.replacement is None:  # shown if Postgres finds state held (in_band.HELD_STATE)
            entry.replacement = context.HELD_STATE_REFUSED
            entry.watch = True
        # The switch is the context; the proxy's SELECT answers "SELECT 0" where the client sees SET.
        tags = 0 if switch.form == "set_config" else _TAG_SET if switch.form == "set" else _TAG_RESET
        self._note_portal(parts.portal, NO_CONTEXT | tags)

    def _forwards_unchanged(self, t: int, data: bytes, pos: int, end: int) -> int:
        """The common case, decided on the raw bytes: this message goes upstream exactly as it came.

        For a Parse the guard allows as it is (of the unnamed statement, or of a named one with no
        flow), a Bind of an ordinary statement, a Describe or Close of a portal: the flow of the
        statement it prepares or binds (guard_fast.NO_CONTEXT, ...; _NOT_A_STATEMENT for Describe
        and Close), noting the unnamed statement's and portal's. -1 for anything else, and
        anything malformed, which takes the full path in _extended; never in audited sessions
        (they track statement SQL).
        """
        if self._on_statement is not None:
            return -1
        start = pos + 5
        if t == codes.DESCRIBE or t == codes.CLOSE:  # portal names are never reserved
            return _NOT_A_STATEMENT if end > start and data[start] == _PORTAL else -1
        name_end = data.find(0, start, end)
        if name_end < 0:
            return -1
        portal = start
        if t == codes.BIND:  # the portal name comes first, then the statement's
            start = name_end + 1
            name_end = data.find(0, start, end)
            if name_end < 0:
                return -1
        # Most names are empty (the unnamed statement) or do not start with r/R: no slice needed.
        if name_end > start and data[start] | 0x20 == _LOWER_R and _reserved(data[start:name_end]):
            return -1
        if self._in_band_statements and data[start:name_end] in self._in_band_statements:
            return -1
        if t == codes.PARSE:
            sql_end = data.find(0, name_end + 1, end)
            if sql_end < 0:
                return -1
            verdict = self._classifier.verdict(data[name_end + 1 : sql_end])
            if verdict.action != "allow":
                return -1
            if name_end == start:
                self._unnamed_flow = flow = verdict.flow
                return flow
            if verdict.flow or (self._flows and data[start:name_end] in self._flows):
                return -1  # a named statement's flow is noted in _extended
            return 0
        # A Bind: the portal takes the statement's flow.
        if name_end == start:
            flow = self._unnamed_flow
        elif self._flows and data[start:name_end] in self._flows:
            return -1
        else:
            flow = 0
        if data[portal] == 0:
            self._unnamed_portal_flow = flow
        elif flow or (self._portal_flows and data[portal : start - 1] in self._portal_flows):
            return -1
        return flow

    @staticmethod
    def _surely_in_block(server: ServerState) -> bool:
        """Inside an explicit transaction block: the last status said so and nothing is in flight."""
        return server.tx_status == codes.TX_IN_BLOCK and not server.pending

    @staticmethod
    def _may_be_idle(server: ServerState) -> bool:
        """Not surely inside a transaction: replies are outstanding, or the last status was idle."""
        return bool(server.pending) or server.tx_status == codes.TX_IDLE

    def _extended(self, server: ServerState, t: int, body: bytes, raw: Slice, to_server: Chunks) -> None:
        if t == codes.PARSE:
            name, sql = fe.parse_fields(body)
            if _reserved(name):
                self._refuse_extended(server, "reserved_name", RESERVED_NAME_REFUSED, to_server)
                return
            verdict = self._classifier.verdict(sql)
            if verdict.action == "refuse":
                self._refuse_extended(server, verdict.rule or "refused", refusal_error(verdict), to_server)
                return
            if verdict.action == "in_band":
                assert verdict.in_band is not None
                self._in_band_parse(server, name, verdict.in_band, body, to_server)
                return
            if self._in_band_statements and name in self._in_band_statements:
                if name:  # Postgres refuses a second statement under a name in use
                    self._refuse_extended(server, "statement_exists", _already_exists(name), to_server)
                    return
                del self._in_band_statements[name]
            if not name:
                self._unnamed_flow = verdict.flow
            elif verdict.flow:
                self._flows[name] = verdict.flow
            elif self._flows:
                self._flows.pop(name, None)
            if self._open is None:
                self._open_batch(
                    server,
                    to_server,
                    context=verdict.action != "discard_all",
                    leads=verdict.flow & NO_CONTEXT != 0,
                )
            elif self._owed and not verdict.flow & NO_CONTEXT:  # before its Parse: see feed_client
                to_server.append(self._inject(server, self._open))
            if verdict.action in ("discard_all", "deallocate_all"):
                self._forget_statements(server)
            if self._restore and verdict.action in ("discard_all", "reset_all"):
                self._restore_after_sync = True
            if self._on_statement is not None:
                self._statement_sql[name] = sql
        else:
            if t == codes.BIND:
                name = fe.bind_statement(body)
                if self._in_band_statements and (found := self._in_band_statements.get(name)) is not None:
                    self._in_band_bind(server, found[0], found[1], body, to_server)
                    return
                if self._on_statement is not None:
                    self._portal_sql[body[: max(body.find(0), 0)]] = self._statement_sql.get(name, b"")
                flow = self._statement_flow(name)
                self._note_portal(body[: max(body.find(0), 0)], flow)
                if self._open is None and flow & NO_CONTEXT:
                    self._open_batch(server, to_server, context=True, leads=True)
                elif self._open is not None and self._owed and not flow & NO_CONTEXT:
                    to_server.append(self._inject(server, self._open))  # before its Bind: see feed_client
            else:
                kind, name = fe.target(body)
                if kind != ord("S"):
                    name = b""
                elif self._in_band_statements and (found := self._in_band_statements.get(name)) is not None:
                    # Describe or Close of the client's in-band statement: the proxy's stands in.
                    if t == codes.CLOSE:
                        del self._in_band_statements[name]
                    raw = be.message(t, b"S" + found[1] + b"\0")
                    name = b""
                elif t == codes.CLOSE and self._flows:
                    self._flows.pop(name, None)
            if name and _reserved(name):
                self._refuse_extended(server, "reserved_name", RESERVED_NAME_REFUSED, to_server)
                return
            if self._open is None:
                self._open_batch(server, to_server, context=True)
        to_server.append(raw)

    def _refuse_extended(self, server: ServerState, rule: str, error: bytes, to_server: Chunks) -> None:
        """Send a placeholder that fails at Parse, so Postgres aborts and skips to Sync as it would."""
        entry = self._open or self._open_batch(server, to_server, context=False)
        if entry.replacement is None:
            entry.replacement = error
            entry.watch = True
        to_server.append(context.REFUSAL_PARSE)
        self._refused(rule)

    def _refuse_query(self, server: ServerState, rule: str, error: bytes, to_server: Chunks) -> None:
        entry = self._open or self._open_batch(server, to_server, context=False)
        entry.needs_sync = True
        if entry.replacement is None:
            entry.replacement = error
            entry.watch = True
        to_server.append(context.REFUSAL_QUERY)
        if entry.prefix_failed:
            to_server.append(fe.SYNC)
        self._end_batch(server)
        self._refused(rule)

    def _refused(self, rule: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(rule)

    def _copy_started(self, server: ServerState) -> None:
        """The client streams COPY data, so the COPY FROM STDIN it asked for has begun.

        Postgres ignores Sync while it reads COPY data, so the Syncs the client sent right after
        the Execute (libpq does) will get no ReadyForQuery: fold their entries back into the batch.
        """
        self._copy_in = True
        extra = self._syncs_after_execute
        if extra and server.pending:
            for _ in range(extra - 1):
                server.pending.pop()
            batch = server.pending[-1]
            batch.closed = False
            self._open = batch
        self._syncs_after_execute = 0
