"""What a server connection still owes, in the order it will answer.

Postgres answers messages in order, so the replies to the proxy's own messages (the context
prefix, a reset, a settings update) can be told apart from the client's by position alone: each
entry says who the next replies belong to and which reply ends the entry. Client entries end at
the ReadyForQuery that answers the client's Sync or Query; the proxy's prefix ends at its
CommandComplete (or its error, after which Postgres skips to the next Sync); internal entries end
at their own ReadyForQuery. (This is PgBouncer's and pgdog's approach, not special cases in the relay.)
"""

from __future__ import annotations

from typing import Any, Final

from rlsproxy.wire import backend as be
from rlsproxy.wire import codes

PREFIX: Final = 0  # the context prefix (Close? Parse? Bind Execute): replies swallowed
CLIENT: Final = 1  # the client's messages up to its Sync/Query: replies forwarded
INTERNAL: Final = 2  # the proxy's own exchange ending with its Sync or Query: replies swallowed

CTX_UNPREPARED: Final = 0  # the context statement does not exist: send Parse before Bind
CTX_PREPARED: Final = 1
CTX_UNKNOWN: Final = 2  # may or may not exist (after DISCARD ALL or a failed prefix): Close, then Parse


class Pending:
    """One entry of the queue. Slots, not a dataclass: one is made per client batch."""

    __slots__ = (
        "closed",
        "creates",
        "deferred_sync",
        "errors",
        "executes",
        "inject_at",
        "inject_skip",
        "injections",
        "kind",
        "needs_sync",
        "offsets",
        "on_done",
        "prefix_failed",
        "replacement",
        "stmt_index",
        "tag",
        "tag_at",
        "translated",
        "watch",
    )

    def __init__(self, kind: int, *, closed: bool = False) -> None:
        self.kind = kind
        # CLIENT: the client sent the Sync or Query that ends this batch (later messages open a new one).
        self.closed = closed
        # CLIENT: prepares a statement of the proxy's (ServerState.switch_statements) that an error
        # in the batch may have skipped.
        self.creates = False
        # CLIENT: ended by a client Query with no Sync behind it; if its prefix fails, Postgres skips
        # to a Sync that would never come, so the proxy sends one.
        self.needs_sync = False
        # CLIENT: its prefix failed while the batch was still open; a Query ending it needs a Sync.
        self.prefix_failed = False
        # CLIENT: a simple Query sent as extended messages (see simple.py): drop the replies a
        # simple Query never gets, and shift error positions of later statements by `offsets`.
        self.translated = False
        self.offsets: tuple[int, ...] | None = None
        self.stmt_index = 0
        # CLIENT: the CommandComplete to show instead of the server's for the client's `tag_at`-th
        # completion (an in-band SET, whose statement is the proxy's SELECT).
        self.tag: bytes | None = None
        self.tag_at = -1
        # CLIENT: some reply needs looking at (translated, replacement, inject_at or tag is set):
        # one flag for the server side's hot path to read.
        self.watch = False
        # CLIENT: the proxy's Sync for a translated COPY FROM STDIN waits for the client's CopyDone
        # (Postgres ignores Sync during COPY).
        self.deferred_sync = False
        # CLIENT: the ErrorResponse to show instead of the syntax error of a refusal placeholder.
        self.replacement: bytes | None = None
        # CLIENT: the client's Executes (or a Query's statements) so far, counted by the relay; the
        # server side counts their completions in stmt_index.
        self.executes = 0
        # CLIENT: a context prefix the relay put inside the batch follows the completion of the
        # client's `inject_at`-th Execute (or statement) and `inject_skip` more replies (to the
        # client's Parse, Bind, Describe or Close sent between); its replies are dropped.
        # -1: none (left).
        self.inject_at = -1
        self.inject_skip = 0
        self.injections: list[tuple[int, int]] | None = None  # more such places, in order
        # INTERNAL: error fields seen, and a callback when the entry is done.
        self.errors: list[dict[str, str]] = []
        self.on_done: Any = None

    def inject(self, position: int, skip: int) -> None:
        """A prefix goes inside this batch after the client's `position` completions and `skip`
        replies to its other messages."""
        self.watch = True
        if self.inject_at < 0:
            self.inject_at, self.inject_skip = position, skip
        elif self.injections is None:
            self.injections = [(position, skip)]
        else:
            self.injections.append((position, skip))

    def retag(self, position: int, tag: bytes) -> None:
        """Show `tag` as the CommandComplete of the client's `position`-th completion."""
        self.watch = True
        self.tag, self.tag_at = be.message(codes.COMMAND_COMPLETE, tag + b"\0"), position

    def next_injection(self) -> None:
        if self.injections:
            self.inject_at, self.inject_skip = self.injections.pop(0)
        else:
            self.inject_at = -1

    def __repr__(self) -> str:
        names = {PREFIX: "PREFIX", CLIENT: "CLIENT", INTERNAL: "INTERNAL"}
        return f"<Pending {names[self.kind]} closed={self.closed} translated={self.translated}>"


# Prefix entries carry no state of their own (the relay reads only their kind): one serves all.
PREFIX_ENTRY: Final = Pending(PREFIX)
