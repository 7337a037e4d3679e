"""The guard's fast path: plain DML and transaction control need no parse tree.

A full parse (pglast builds a Python tree) costs 50-400 µs; libpg_query's scanner costs a few.
Texts that differ only in literal values (a simple-protocol client, pgbench) all miss the verdict
cache, so the tokens decide first: a single statement that starts with a DML or transaction
keyword, names none of the functions the guard watches and has no Unicode-escaped identifier
cannot hold anything the guard refuses or handles (SET/RESET, DO, function bodies, PREPARE and
EXECUTE, DISCARD, VACUUM and friends, the in-band shapes). Anything else, or anything the scanner
rejects, gets the full parse: this is only ever a shortcut to "allow", never to a refusal.

Before the scanner (which builds a Python tuple per token, a few µs), a plain-text check decides
most such texts in about a microsecond: every test in it is a substring test over the whole text,
so what the scanner would see as a string or comment can only make it defer, never allow.
"""

from __future__ import annotations

import re
from typing import Final

from pglast import parser
from pglast.parser import ParseError

# First tokens of statements whose parse trees hold no node the guard inspects, other than
# function calls (checked by name below). COMMIT/ROLLBACK ... PREPARED are excluded by token.
_FAST_FIRST: Final = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE_P",
        "MERGE",
        "WITH",
        "VALUES",
        "TABLE",
        "BEGIN_P",
        "START",
        "COMMIT",
        "END_P",
        "ROLLBACK",
        "ABORT_P",
        "SAVEPOINT",
        "RELEASE",
        "SHOW",
    }
)
# Functions the guard looks into (set_config, and those that run SQL passed as text).
_WATCHED: Final = frozenset(
    {
        "set_config",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "pg_settings",  # not a function: a view whose UPDATE rule calls set_config
    }
)
_SEMICOLON: Final = "ASCII_59"

# Where a statement stands in a transaction, for where the context prefix goes (a bit set, the
# Verdict's `flow`). NO_CONTEXT: it reads and writes no data, so it may run before the context is
# set, and must where the context's snapshot would break it (BEGIN ISOLATION LEVEL, SET
# TRANSACTION) or where the transaction has failed (ROLLBACK). ENDS: after it the transaction-local
# context is gone (COMMIT, ROLLBACK, ROLLBACK TO SAVEPOINT, AND CHAIN, RESET ALL): owed again.
NO_CONTEXT: Final = 1
ENDS: Final = 2
# ATOMIC: the statement may end its transaction from inside (a CALL of a procedure, a DO block with
# COMMIT, ROLLBACK or CALL): the rest of it would run without the context. Postgres forbids that
# inside an explicit transaction block, so it runs only there (relay: refused elsewhere).
ATOMIC: Final = 4
_FLOW_BY_TOKEN: Final = {
    "BEGIN_P": NO_CONTEXT,
    "START": NO_CONTEXT,
    "COMMIT": NO_CONTEXT | ENDS,
    "END_P": NO_CONTEXT | ENDS,
    "ROLLBACK": NO_CONTEXT | ENDS,
    "ABORT_P": NO_CONTEXT | ENDS,
}
_FLOW_BY_FIRST: Final = {
    name[0].lower(): ((name.removesuffix("_P").lower(), flow),) for name, flow in _FLOW_BY_TOKEN.items()
}

# The leading keyword of _FAST_FIRST as written (the scanner's token names drop the _P suffix).
_FAST_WORDS: Final = frozenset(name.removesuffix("_P") for name in _FAST_FIRST)
# Postgres' whitespace (scan.l: space), then a word that ends where the scanner's identifier would:
# "SELECT$1", "SELECT_x" or "SELECTé" is one identifier to Postgres, not the keyword.
_LEADING_WORD: Final = re.compile(r"[ \t\n\r\f\v]*([A-Za-z]+)(?![\w$]|[^\x00-\x7f])")
_TRAILING: Final = " \t\n\r\f\v;"
_SPACE: Final = " \t\n\r\f\v"
# The same keywords by first letter, lower-case (the usual case, without the regex), and what may
# follow a keyword for it to end there (no letter, digit, _ or $; the text is ASCII by then).
_FAST_BY_FIRST: Final = {
    letter: tuple(w.lower() for w in sorted(_FAST_WORDS) if w[0].lower() == letter)
    for letter in {w[0].lower() for w in _FAST_WORDS}
}
_IDENTIFIER_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")
# Lower-case substrings after which only the scanner can tell: watched names anywhere (even in a
# string), "prepared" (COMMIT PREPARED), "&" (U& escapes), ";" before the end (several statements).
# (query_to_xml stands for its longer variants, which contain it.)
_DEFER: Final = (
    *(word for word in _WATCHED if not word.startswith("query_to_xml")),
    "query_to_xml",
    "prepared",
    "&",
    "\0",
)


def plain_text_allows(sql: str) -> bool | None:
    """True: allowed without the scanner. False: surely not plain DML. None: ask the scanner."""
    if not sql.isascii():  # identifier rules and encodings beyond ASCII are the scanner's to apply
        return None
    lowered = sql.lower()
    if not _starts_with_fast_word(lowered):
        match = _LEADING_WORD.match(sql)
        if match is None:
            return None
        if match.group(1).upper() not in _FAST_WORDS:
            return False
    if ";" in sql.rstrip(_TRAILING):
        return None
    for word in _DEFER:
        if word in lowered:
            return None
    return True


def _starts_with_fast_word(lowered: str) -> bool:
    """The leading-word regex's "one of _FAST_WORDS" answer, found with a few string calls. False
    means only that this quick look did not find one: the regex then decides."""
    text = lowered.lstrip(_SPACE)
    for word in _FAST_BY_FIRST.get(text[:1], ()):
        if text.startswith(word) and text[len(word) : len(word) + 1] not in _IDENTIFIER_CHARS:
            return True
    return False


def plain_flow(sql: str) -> int:
    """The flow of a text plainly_allowed allows (its first keyword decides; see NO_CONTEXT)."""
    text = sql.lstrip(_SPACE)
    candidates = _FLOW_BY_FIRST.get(text[:1].lower())
    if candidates is not None:
        head = text[:9].lower()  # the longest word is "rollback"
        for word, flow in candidates:
            if head.startswith(word) and head[len(word) : len(word) + 1] not in _IDENTIFIER_CHARS:
                return flow
        return 0
    if text[:1] not in ("-", "/"):
        return 0  # select, insert, update, ...
    try:  # a comment before the first word: the scanner's first token
        tokens = parser.scan(sql)
    except (ParseError, UnicodeError, ValueError):
        return 0
    words = [token.name for token in tokens if token.name not in ("C_COMMENT", "SQL_COMMENT")]
    return _FLOW_BY_TOKEN.get(words[0], 0) if words else 0


def plainly_allowed(sql: str) -> bool:
    """True when the text alone shows the statement is allowed as it is."""
    quick = plain_text_allows(sql)
    if quick is not None:
        return quick
    if "\0" in sql:
        return False
    try:
        tokens = parser.scan(sql)
    except (ParseError, UnicodeError, ValueError):
        return False
    while tokens and tokens[-1].name == _SEMICOLON:
        tokens.pop()
    if not tokens or tokens[0].name not in _FAST_FIRST:
        return False
    for token in tokens:
        name = token.name
        if name == "IDENT":
            word = sql[token.start : token.end + 1].strip('"').lower()
            if word in _WATCHED:
                return False
        elif name in ("UIDENT", "PREPARED", _SEMICOLON):  # escaped names, 2PC, several statements
            return False
    return True
