"""The context prefix: the messages that put a transaction under the client's identity.

The statement is prepared once per server connection under a reserved name and executed with
the role and the claims as bind parameters (never pasted into SQL). `set_config(..., true)` is
transaction-local, so the context ends with the transaction and a server connection at rest is
the login role, which has no privileges of its own: a missing context fails closed.
"""

from __future__ import annotations

import functools
from typing import Final, NamedTuple

from rlsproxy.session.in_band import HELD_STATE, REFUSED_CAST
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.backend import message

RESERVED_PREFIX: Final = "rlsproxy_"  # statement and portal names no client may use (guard.py)
CONTEXT_STATEMENT: Final = "rlsproxy_ctx"
CONTEXT_SQL: Final = "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)"
# For sessions that have switched identity in-band (in_band.py), every prefix: the same, unless
# the client already switched this transaction's identity (in_band.py marks it with
# rlsproxy.in_band, a setting clients cannot write), so that a prefix pipelined later in the same
# transaction does not undo that switch; and, where it does set the identity, it fails while the
# session holds state made under another identity (in_band.HELD_STATE: a transaction under the
# session's own identity must not read a cursor or temporary table an in-band identity filled).
# Its CASEs and checks cost Postgres some µs: sessions that never switched use the plain one.
KEEPING_STATEMENT: Final = "rlsproxy_ctx_keep"
KEEPING_SQL: Final = (
    "SELECT set_config('role', k.role, true), set_config('request.jwt.claims', k.claims, true) FROM ("
    "SELECT CASE WHEN current_setting('rlsproxy.in_band', true) = 'on' THEN current_setting('role') "
    f"WHEN {HELD_STATE} THEN {REFUSED_CAST}::text ELSE $1 END AS role, "
    "CASE WHEN current_setting('rlsproxy.in_band', true) = 'on' "
    "THEN current_setting('request.jwt.claims', true) ELSE $2 END AS claims) AS k"
)
TEXT_OID: Final = 25


class Statement(NamedTuple):
    """A context statement: how to prepare it, and how to drop it when unsure it exists."""

    name: str
    parse: bytes
    # Close of a statement that does not exist is not an error, so Close+Parse re-prepares safely
    # when the proxy cannot be sure the statement is there (after DISCARD ALL or a failed prefix).
    close: bytes


def _statement(name: str, sql: str) -> Statement:
    return Statement(
        name, fe.parse(name, sql, (TEXT_OID, TEXT_OID)), message(codes.CLOSE, b"S" + name.encode() + b"\0")
    )


PLAIN: Final = _statement(CONTEXT_STATEMENT, CONTEXT_SQL)
KEEPING: Final = _statement(KEEPING_STATEMENT, KEEPING_SQL)
EXECUTE_UNNAMED: Final = fe.execute()
CONTEXT_PORTAL: Final = CONTEXT_STATEMENT
_INSIDE_HEAD: Final = message(codes.CLOSE, b"P" + CONTEXT_PORTAL.encode() + b"\0")
_EXECUTE_INSIDE: Final = fe.execute(CONTEXT_PORTAL)


class Prefix(NamedTuple):
    """Bind + Execute of each context statement for one identity: built once per identity.

    `plain`/`keeping` use the unnamed portal and go first in a batch, before the client's own Bind.
    The `_inside` forms go inside a client's batch, after a statement that needs no context or
    that ended it (guard_fast.NO_CONTEXT, ENDS), where the unnamed portal may hold the client's:
    they use the reserved portal rlsproxy_ctx, closed first (it may remain from an earlier one in
    the same transaction; closing a missing portal is no error).
    """

    plain: bytes
    keeping: bytes
    plain_inside: bytes
    keeping_inside: bytes


# Placeholder statement sent in place of a refused client message. Postgres fails it at parse
# time with a syntax error naming this word, which the relay recognises and replaces with the
# refusal: the server's transaction is aborted exactly as a real error would abort it.
REFUSAL_MARKER: Final = "RLSPROXY_REFUSED"  # (also in in_band.REFUSED_CAST's error)
# What a client sees when Postgres finds state held across an identity switch (in_band.HELD_STATE).
HELD_STATE_REFUSED: Final = be.error_response(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "rlsproxy: identity change refused: the session holds state made under another identity "
    "(a WITH HOLD cursor, a temporary table, LISTEN or an advisory lock), which the next "
    "identity must not see or act through",
    hint="CLOSE the cursor, drop the temporary table, UNLISTEN and pg_advisory_unlock_all() in the "
    "transaction that made them, or run DISCARD ALL; or give such work a connection of its own",
)
REFUSAL_QUERY: Final = fe.query(REFUSAL_MARKER)
REFUSAL_PARSE: Final = fe.parse("", REFUSAL_MARKER)


@functools.lru_cache(maxsize=4096)  # reconnecting clients of one identity share their prefix
def context_prefix(role: str, claims_json: str) -> Prefix:
    params = (role, claims_json)
    return Prefix(
        fe.bind(CONTEXT_STATEMENT, params) + EXECUTE_UNNAMED,
        fe.bind(KEEPING_STATEMENT, params) + EXECUTE_UNNAMED,
        _INSIDE_HEAD + fe.bind(CONTEXT_STATEMENT, params, CONTEXT_PORTAL) + _EXECUTE_INSIDE,
        _INSIDE_HEAD + fe.bind(KEEPING_STATEMENT, params, CONTEXT_PORTAL) + _EXECUTE_INSIDE,
    )
