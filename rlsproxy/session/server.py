"""One upstream server connection as seen by the proxy: login, transaction status, owed replies.

`ServerState.receive` is the server-to-client hot path. Per message it reads the 5-byte header
and looks at the head of the queue of expected replies; runs of messages that belong to the client
are forwarded as slices of the received buffer, replies to the proxy's own messages are dropped.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Final

from rlsproxy.auth.upstream import UpstreamAuth
from rlsproxy.errors import ProxyError
from rlsproxy.session import context
from rlsproxy.session.expected import (
    CLIENT,
    CTX_PREPARED,
    CTX_UNKNOWN,
    CTX_UNPREPARED,
    INTERNAL,
    PREFIX,
    Pending,
)
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, pinned, sqlstate
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.framing import STREAM_AT, Carry, FramingError
from rlsproxy.wire.startup import build_startup_message

Slice = bytes | memoryview  # part of a read: a memoryview of a long one, else bytes (VIEW_AT)
Chunks = list[Slice]
_HEADER: Final = struct.Struct("!BI")  # message type, length (which counts itself, not the type byte)
_MARKER: Final = context.REFUSAL_MARKER.encode()
# Replies to the extended messages that stand in for a simple Query; a simple Query never gets them.
# (CloseComplete: the in-band switch closes the proxy's statement before preparing it again.)
_TRANSLATION_ONLY: Final = frozenset(
    (codes.PARSE_COMPLETE, codes.BIND_COMPLETE, codes.NO_DATA, codes.CLOSE_COMPLETE)
)
_PARSED_AND_BOUND: Final = be.message(codes.PARSE_COMPLETE, b"") + be.message(codes.BIND_COMPLETE, b"")
_PARSED_AND_BOUND_LEN: Final = len(_PARSED_AND_BOUND)
# The one reply each of Parse, Bind, Close and Describe (a statement's: two) gets.
_MESSAGE_REPLIES: Final = frozenset(
    (
        codes.PARSE_COMPLETE,
        codes.BIND_COMPLETE,
        codes.CLOSE_COMPLETE,
        codes.PARAMETER_DESCRIPTION,
        codes.ROW_DESCRIPTION,
        codes.NO_DATA,
    )
)
# Replies that may arrive at any time and always belong to the client.
_ASYNC: Final = frozenset((codes.NOTICE_RESPONSE, codes.NOTIFICATION_RESPONSE, codes.PARAMETER_STATUS))
# Reads at least this long are sliced through a memoryview (no copies); shorter ones, most replies,
# as bytes: copying a few hundred bytes costs less than making the view and a view per slice.
VIEW_AT: Final = 2048
_SWITCH_NAME: Final = context.RESERVED_PREFIX.encode() + b"ib_"
# Upper bound on one server message; DataRows of 1 GB fields exist, the framing only needs a sanity cap.
MAX_SERVER_MESSAGE: Final = 1 << 31


class ServerState:
    """Protocol state of one logged-in upstream connection (no I/O)."""

    def __init__(self, params: dict[str, str], pid: int, secret: bytes) -> None:
        self.params = params  # ParameterStatus values, kept current
        self.pid = pid
        self.secret = secret
        self.tx_status = codes.TX_IDLE
        self.ctx = CTX_UNPREPARED  # the plain context statement (see context.py)
        self.ctx_keeping = CTX_UNPREPARED  # the one that keeps an in-band switch
        self.pending: deque[Pending] = deque()
        # The proxy's in-band switch statements that serve a client's unnamed in-band statement,
        # by (SQL, parameter types): prepared once per server connection (relay._in_band_parse).
        self.switch_statements: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._switch_count = 0
        self._carry: Carry | None = None  # what the last read left: see wire.framing.Carry
        # The last successful prefix's replies (BindComplete, its DataRow, CommandComplete), byte
        # for byte. The same identity gets the same bytes every transaction: one comparison skips
        # them. Anything else (another identity, an error, a notice in between) is read message by
        # message, as always.
        self._prefix_reply = b""

    @property
    def idle(self) -> bool:
        """Nothing owed and no transaction open: safe to hand to another client or to reset."""
        return not self.pending and self.tx_status == codes.TX_IDLE

    def receive(self, data: bytes, to_client: Chunks, to_server: Chunks) -> None:
        """Consume server bytes; append what the client must see, and any proxy reply to the server."""
        pos = fwd = 0
        if self._carry is not None:  # the rest of a large message, or of one kept from the last read
            resumed = self._carry.resume(data, to_client)
            if resumed is None:
                return
            self._carry = None
            data, pos = resumed
        n = len(data)
        view = memoryview(data) if n >= VIEW_AT else data  # see VIEW_AT
        pending = self.pending
        header = _HEADER.unpack_from
        head = pending[0] if pending else None  # looked up again only when an entry ends
        # Inside a client entry, the replies of a context prefix the relay put inside its batch.
        swallow = head is not None and head.inject_at == head.stmt_index and not head.inject_skip
        prefix_start = -1  # where the replies of a prefix began, to learn them
        t: int  # declared: compiled (setup.py), the comparisons below are then on machine integers
        length: int
        while n - pos >= 5:
            t, length = header(data, pos)
            end = pos + 1 + length
            if length < 4 or length >= MAX_SERVER_MESSAGE:
                raise FramingError(f"server sent an invalid message length {length}")
            if end > n:
                # Large and the client's, forwarded unread: pass on what came, not wait for all.
                big = length >= STREAM_AT and (t == codes.DATA_ROW or t == codes.COPY_DATA)
                if big and (head is None or head.kind == CLIENT):
                    self._carry = Carry(passing=end - n)
                    pos = n
                break
            if head is None or head.kind == CLIENT:
                if t == codes.DATA_ROW:  # the bulk of most streams
                    if swallow:
                        if fwd < pos:
                            to_client.append(view[fwd:pos])
                        fwd = end
                elif t == codes.READY_FOR_QUERY:
                    self.tx_status = data[pos + 5]
                    if head is not None:
                        pending.popleft()
                        head = pending[0] if pending else None
                        swallow = (
                            head is not None and head.inject_at == head.stmt_index and not head.inject_skip
                        )
                elif t == codes.PARAMETER_STATUS:  # forwarded, and noted (pinned settings: raises)
                    self._note_parameter(data[pos + 5 : end])
                elif head is not None and head.watch:
                    if head.inject_at == head.stmt_index and head.inject_skip and t in _MESSAGE_REPLIES:
                        head.inject_skip -= 1  # the client's, sent before the prefix went in
                        swallow = not head.inject_skip
                    elif swallow:  # the prefix inside the batch: dropped up to its CommandComplete
                        if fwd < pos:
                            to_client.append(view[fwd:pos])
                        if t == codes.COMMAND_COMPLETE:
                            head.next_injection()
                            swallow = False
                        elif t == codes.ERROR_RESPONSE:  # fail closed, as a failed prefix at the start
                            head.inject_at = -1
                            swallow = False
                            self.forget_context()
                            to_client.append(self._prefix_error(data[pos:end]))
                            self._after_failed_prefix(head, to_server)
                        fwd = end
                    elif head.translated and t in _TRANSLATION_ONLY:
                        if fwd < pos:
                            to_client.append(view[fwd:pos])
                        # The usual pair, in one step. (A slice compared: bytes.startswith with a
                        # start takes a tuple of arguments, costlier compiled.)
                        if data[pos : pos + _PARSED_AND_BOUND_LEN] == _PARSED_AND_BOUND:
                            end = pos + _PARSED_AND_BOUND_LEN
                        fwd = end
                    elif t == codes.ERROR_RESPONSE:
                        if fwd < pos:
                            to_client.append(view[fwd:pos])
                        to_client.append(self._client_error(head, data[pos:end]))
                        fwd = end
                        if head.inject_at >= 0:  # Postgres skips the rest of the batch: a prefix
                            head.inject_at = -1  # in it too, with the Parse of its statement if any
                            self.forget_context()
                        if head.creates:  # the proxy's statement may not have been prepared
                            self.switch_statements.clear()
                        if head.deferred_sync:  # a COPY FROM STDIN that failed: Postgres waits
                            head.deferred_sync = False  # for a Sync, ignoring COPY data until then
                            to_server.append(fe.SYNC)
                    elif (
                        t == codes.COMMAND_COMPLETE
                        or t == codes.EMPTY_QUERY_RESPONSE
                        or t == codes.PORTAL_SUSPENDED
                    ):
                        head.stmt_index += 1  # one per client Execute (or statement of a Query)
                        swallow = head.inject_at == head.stmt_index and not head.inject_skip
                        if head.tag_at == head.stmt_index - 1 and head.tag is not None:
                            if fwd < pos:
                                to_client.append(view[fwd:pos])
                            to_client.append(head.tag)
                            fwd = end
                elif head is not None and (
                    t == codes.COMMAND_COMPLETE
                    or t == codes.EMPTY_QUERY_RESPONSE
                    or t == codes.PORTAL_SUSPENDED
                ):
                    # Counted in every client entry: the relay may yet put a prefix inside this
                    # batch after the completions already seen (see Pending.inject_at).
                    head.stmt_index += 1
                    swallow = head.inject_at == head.stmt_index and not head.inject_skip
                pos = end
                continue
            # The head is the proxy's own exchange.
            if t in _ASYNC:
                if t == codes.PARAMETER_STATUS:
                    self._note_parameter(data[pos + 5 : end])
                prefix_start = -1  # not a reply to learn
                pos = end
                continue
            if fwd < pos:
                to_client.append(view[fwd:pos])
            if head.kind == PREFIX:
                if t == codes.BIND_COMPLETE:
                    reply = self._prefix_reply
                    if reply and data[pos : pos + len(reply)] == reply:
                        end = pos + len(reply)
                        pending.popleft()
                    else:
                        prefix_start = pos
                elif t == codes.COMMAND_COMPLETE:
                    # ctx was set when the Parse went out: a DEALLOCATE/DISCARD the client sent
                    # since then may already have marked it unknown again.
                    pending.popleft()
                    if prefix_start >= 0:
                        self._prefix_reply = data[prefix_start:end]
                        prefix_start = -1
                elif t == codes.ERROR_RESPONSE:
                    # Fail closed: the client's messages up to the next Sync are skipped by
                    # Postgres; the client sees why. A Query batch needs the proxy's own Sync.
                    pending.popleft()
                    prefix_start = -1
                    self.forget_context()
                    to_client.append(self._prefix_error(data[pos:end]))
                    batch = pending[0] if pending else None
                    self._after_failed_prefix(batch, to_server)
                fwd = end
            elif head.kind == INTERNAL:
                fwd = end
                if t == codes.ERROR_RESPONSE:
                    head.errors.append(be.parse_fields(data[pos + 5 : end]))
                elif t == codes.READY_FOR_QUERY:
                    self.tx_status = data[pos + 5]
                    pending.popleft()
                    if head.on_done is not None:
                        head.on_done(head)
            head = pending[0] if pending else None  # an on_done callback may queue more, too
            swallow = head is not None and head.inject_at == head.stmt_index and not head.inject_skip
            pos = end
        if fwd < pos:
            to_client.append(view[fwd:pos])
        if pos < n:
            self._carry = Carry(kept=view[pos:])

    @staticmethod
    def _client_error(head: Pending, raw: bytes) -> bytes | memoryview:
        """The error the client sees: our refusal for the placeholder, or Postgres' own,
        its position shifted to the whole Query text for a later statement of a translated Query."""
        if head.replacement is not None:
            replacement, head.replacement = head.replacement, None
            if _MARKER in raw:
                return replacement
        if head.offsets and head.stmt_index:
            fields = be.parse_fields(raw[5:])
            if "P" in fields and head.stmt_index < len(head.offsets):
                fields["P"] = str(int(fields["P"]) + head.offsets[head.stmt_index])
                return be.fields_message(codes.ERROR_RESPONSE, fields)
        return raw

    @staticmethod
    def _prefix_error(raw: bytes) -> bytes:
        """A failed prefix's error, or the proxy's own where Postgres found state held (context.py)."""
        return context.HELD_STATE_REFUSED if _MARKER in raw else raw

    @staticmethod
    def _after_failed_prefix(batch: Pending | None, to_server: Chunks) -> None:
        """Postgres now skips to the next Sync: make sure one comes and the client gets one ReadyForQuery."""
        if batch is None:
            return
        if batch.deferred_sync:  # a COPY FROM STDIN that will not run: no COPY, so Sync now
            batch.deferred_sync = False
            to_server.append(fe.SYNC)
        elif batch.needs_sync:  # a client Query ended the batch and no Sync follows it
            to_server.append(fe.SYNC)
        elif not batch.closed:  # if a Query ends it later, the relay adds the Sync
            batch.prefix_failed = True

    def lost(self) -> None:
        """The connection is gone: the proxy's own exchanges still owed end with an error."""
        pending, self.pending = self.pending, deque()
        for entry in pending:
            if entry.kind == INTERNAL and entry.on_done is not None:
                entry.errors.append({"C": sqlstate.CONNECTION_FAILURE, "M": "upstream connection lost"})
                entry.on_done(entry)

    def _note_parameter(self, body: bytes) -> None:
        name, value = be.parse_parameter_status(body)
        self.params[name] = value
        if name in _WATCHED_PARAMETERS:
            check_reported(name, value)

    def context_messages(self, prefix: context.Prefix, *, keeping: bool, inside: bool = False) -> bytes:
        """The prefix for one transaction, preparing its context statement when needed.

        `keeping`: the transaction may already hold an in-band switch, which the prefix must keep.
        `inside`: it goes inside a client's batch (see context.Prefix).
        """
        if keeping:
            state, statement = self.ctx_keeping, context.KEEPING
            bind = prefix.keeping_inside if inside else prefix.keeping
            self.ctx_keeping = CTX_PREPARED  # optimistic; a failed prefix sets it back to unknown
        else:
            state, statement = self.ctx, context.PLAIN
            bind = prefix.plain_inside if inside else prefix.plain
            self.ctx = CTX_PREPARED
        if state == CTX_PREPARED:
            return bind
        head = statement.parse + bind
        return statement.close + head if state == CTX_UNKNOWN else head

    def forget_context(self, state: int = CTX_UNKNOWN) -> None:
        """The context statements may be gone (DISCARD ALL, DEALLOCATE ALL, a failed prefix)."""
        self.ctx = self.ctx_keeping = state
        self.switch_statements.clear()

    def switch_name(self) -> bytes:
        """A new reserved name for a statement of the proxy's on this connection."""
        self._switch_count += 1
        return b"%s%d" % (_SWITCH_NAME, self._switch_count)

    def internal(self, messages: bytes, on_done: Callable[[Pending], None] | None = None) -> bytes:
        """Queue the proxy's own exchange (which must end with Sync or a Query); return its bytes."""
        entry = Pending(INTERNAL)
        entry.on_done = on_done
        self.pending.append(entry)
        return messages


# Reported by Postgres whenever they change (GUC_REPORT). The guard cannot stop every way they may
# change (a role's or database's default, a function's SET clause run by someone else's code).
_WATCHED_PARAMETERS: Final = frozenset((*pinned.PINNED, "is_superuser"))


def check_reported(name: str, value: str) -> None:
    """Fail closed when the server reports a setting under which the proxy cannot vouch for the
    session: a pinned setting the guard would read texts differently under, or a superuser."""
    why = pinned.refusal(name, value)
    if why is None and name == "is_superuser" and value == "on":
        why = "the session became a superuser, which no client identity may be"
    if why is not None:
        raise ProxyError(
            f"rlsproxy: {why}; the session is closed", code=sqlstate.FEATURE_NOT_SUPPORTED, fatal=True
        )


class UpstreamLogin:
    """The proxy's own startup and authentication with Postgres, up to the first ReadyForQuery."""

    def __init__(self, user: str, password: str | None, database: str, params: dict[str, str]) -> None:
        self._auth = UpstreamAuth(user, password)
        self._startup = build_startup_message({"user": user, "database": database, **params})
        self._buf = b""
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = b""
        self.done = False

    def start(self) -> bytes:
        return self._startup

    def receive(self, data: bytes) -> bytes:
        """Consume login replies; return bytes to send. Raises ProxyError on failure."""
        self._buf += data
        out = b""
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 5 and not self.done:
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            end = pos + 1 + length
            if length < 4 or length > 1 << 20:
                raise ProxyError("upstream sent an invalid login message", code=sqlstate.CONNECTION_FAILURE)
            if end > len(buf):
                break
            t, body = buf[pos], buf[pos + 5 : end]
            if t == codes.AUTHENTICATION:
                reply = self._auth.respond(int.from_bytes(body[:4], "big"), body[4:])
                if reply is not None:
                    out += fe.password(reply)
            elif t == codes.PARAMETER_STATUS:
                name, value = be.parse_parameter_status(body)
                self.params[name] = value
                if name in _WATCHED_PARAMETERS:
                    check_reported(name, value)
            elif t == codes.BACKEND_KEY_DATA:
                self.pid = int.from_bytes(body[:4], "big")
                self.secret = bytes(body[4:])
            elif t == codes.READY_FOR_QUERY:
                self.done = True
            elif t == codes.ERROR_RESPONSE:
                fields = be.parse_fields(body)
                raise ProxyError(
                    f"upstream login failed: {fields.get('M', 'unknown error')}",
                    code=fields.get("C", sqlstate.CONNECTION_FAILURE),
                    fatal=True,
                )
            # NoticeResponse and NegotiateProtocolVersion during login need no answer.
            pos = end
        self._buf = buf[pos:]
        return out

    def server_state(self) -> ServerState:
        return ServerState(self.params, self.pid, self.secret)
