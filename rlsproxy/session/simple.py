"""A client's simple Query, sent as extended-protocol messages behind the context prefix.

Why: the prefix is an unsynced Bind+Execute. Up to PostgreSQL 16 a simple Query after it ran in
the prefix's implicit transaction and committed; since 17 the Query leaves that transaction open
(ReadyForQuery says T) and a following Sync corrupts the backend's transaction state
("StartTransactionCommand: unexpected state STARTED"). Extended messages after the prefix, closed
by one Sync, behave the same on every version. So each statement of the Query becomes
Parse/Bind/Describe/Execute, and the replies a simple Query would not produce (ParseComplete,
BindComplete, NoData) are dropped by the relay. Several statements in one Query run, as in the
simple protocol, in one implicit transaction that an error ends; error positions are shifted
back to the whole text.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import pglast

from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.backend import message

DESCRIBE_UNNAMED_PORTAL: Final = message(codes.DESCRIBE, b"P\0")
BIND_UNNAMED: Final = fe.bind("", ())
EXECUTE_ALL: Final = fe.execute()


class Translation(NamedTuple):  # a tuple: built per distinct text on the hot path
    messages: bytes  # Parse/Bind/Describe/Execute per statement, no Sync
    offsets: tuple[int, ...] | None  # character offset of each statement, when there are several
    copy_in: bool  # the last statement is COPY FROM STDIN: the Sync must wait for the COPY to end
    copy_not_last: bool  # COPY FROM STDIN followed by more statements: cannot be pipelined
    # where each statement's messages begin in `messages`, when there are several (a context
    # prefix may go between them: relay._query_in_new_transaction)
    starts: tuple[int, ...] | None = None


_AFTER_PARSE: Final = BIND_UNNAMED + DESCRIBE_UNNAMED_PORTAL + EXECUTE_ALL
# A Parse of the unnamed statement up to its SQL: type, length, the empty name's terminator.
_PARSE_HEAD: Final = struct.Struct("!BIB")
# What follows the SQL: its terminator, no parameter types, then the rest of one statement's messages.
_PARSE_TAIL: Final = b"\0\0\0" + _AFTER_PARSE
PARSE_TAIL_SYNC: Final = _PARSE_TAIL + message(codes.SYNC, b"")


def parse_head(sql_length: int) -> bytes:
    """The bytes before the SQL in the Parse of the unnamed statement (see _PARSE_TAIL)."""
    return _PARSE_HEAD.pack(codes.PARSE, sql_length + 8, 0)  # 8: the length itself, 1 + 3 bytes around it


def _statement(sql: bytes) -> bytes:
    return parse_head(len(sql)) + sql + _PARSE_TAIL


def decode_sql(raw: bytes) -> tuple[str, str]:
    """The text for the parser and the codec that gives the same bytes back.

    Non-UTF-8 bytes can only come from a single-byte client encoding (the startup check allows no
    other), where latin-1 maps each byte to one character and keeps every ASCII delimiter in place.
    """
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _is_copy_in(sql: str) -> bool:
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return False
    return any(
        isinstance(s.stmt, pglast.ast.CopyStmt) and s.stmt.is_from and not s.stmt.filename for s in statements
    )


def whole(raw: bytes) -> Translation:
    """The whole text as it came: error positions stay exact, an empty text gives EmptyQuery."""
    copy_in = b"copy" in raw.lower() and _is_copy_in(decode_sql(raw)[0])
    return Translation(_statement(raw), None, copy_in, False)


def single_statement(raw: bytes) -> bool:
    """Surely one statement (or a malformed one): no `;` but perhaps a last one. Cheap, no parse."""
    semicolons = raw.count(b";")
    return semicolons == 0 or (semicolons == 1 and raw.rstrip().endswith(b";"))


def translate(raw: bytes) -> Translation:
    """Build the extended messages for the SQL of a simple Query (the guard has parsed it already)."""
    if single_statement(raw):
        return whole(raw)  # no need to split
    sql, codec = decode_sql(raw)
    try:
        slices = pglast.split(sql, only_slices=True)
    except pglast.parser.ParseError:
        slices = ()
    if len(slices) <= 1:
        return whole(raw)
    parts = [sql[s] for s in slices]
    copies = ["copy" in p.lower() and _is_copy_in(p) for p in parts]
    encoded = [_statement(p.encode(codec)) for p in parts]
    starts = [0]
    for one in encoded[:-1]:
        starts.append(starts[-1] + len(one))
    return Translation(
        b"".join(encoded),
        tuple(s.start for s in slices),
        copies[-1],
        any(copies[:-1]),
        tuple(starts),
    )
