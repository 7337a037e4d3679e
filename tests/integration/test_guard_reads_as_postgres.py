"""The guard reads a text as Postgres does, under every client setting the proxy accepts.

A property test: generated string literals (plain, E'' with backslash escapes, dollar-quoted,
U&'' with Unicode escapes) around generated contents full of quotes, backslashes and multibyte
characters. What the guard's parser (pglast) says the literal's value is must be what Postgres
returns for it, sent through the proxy in each client encoding the proxy lets a client choose.
Where they disagree, the guard would judge one text and Postgres run another.
"""

from __future__ import annotations

from typing import Any

import pglast
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy

# Encodings a client may choose (wire/pinned.py), each with the characters it can carry.
ENCODINGS = {
    "UTF8": ("utf-8", "aé€𝄞\u00a0ü中"),
    "LATIN1": ("latin-1", "aéü\u00a0ÿ"),
    "WIN1252": ("cp1252", "aé€ü"),
    "EUC_JP": ("euc_jp", "aあ漢"),
    "SQL_ASCII": ("ascii", "a"),
}
TRICKY = [
    "'",
    "''",
    "\\",
    "\\'",
    "$",
    "$$",
    "--",
    "/*",
    "*/",
    "\n",
    ";",
    '"',
    "x",
    " ",
    "\\\\",
    "\\n",
    "\\x41",
]


def contents(extra: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from([*TRICKY, *extra]), max_size=12).map("".join)


def literal(kind: str, value: str) -> str:
    if kind == "plain":
        return "'" + value.replace("'", "''") + "'"
    if kind == "escape":
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "raw_escape":  # the generated text as it is inside E'': its backslashes are escapes
        return "E'" + value.replace("'", "''") + "'"
    if kind == "dollar":
        tag = "q"
        while f"${tag}$" in value:
            tag += "q"
        return f"${tag}${value}${tag}$"
    return "U&'" + "".join(f"\\{ord(c):04x}" if ord(c) < 0x10000 else f"\\+{ord(c):06x}" for c in value) + "'"


def guard_reading(sql: str) -> str | None:
    """The value pglast sees for `SELECT <literal>`, or None if it is not one string constant."""
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    if len(stmts) != 1:
        return None
    targets = getattr(stmts[0].stmt, "targetList", None) or ()
    if len(targets) != 1:
        return None
    value = targets[0].val
    if isinstance(value, pglast.ast.A_Const) and isinstance(value.val, pglast.ast.String):
        return value.val.sval or ""
    return None


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_string_literals_read_the_same(proxy: RunningProxy, encoding: str) -> None:
    codec, extra = ENCODINGS[encoding]
    dsn = proxy.dsn(token=token_for(ALICE), client_encoding=encoding)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        assert pgconn.parameter_status(b"client_encoding") == encoding.encode()
        assert pgconn.parameter_status(b"standard_conforming_strings") == b"on"
        checked: list[int] = []

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(
            kind=st.sampled_from(["plain", "escape", "raw_escape", "dollar", "unicode"]),
            value=contents(extra),
        )
        def same(kind: str, value: str) -> None:
            sql = f"SELECT {literal(kind, value)}"
            seen = guard_reading(sql)
            result = pgconn.exec_(sql.encode(codec))
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                return  # Postgres refused it (an invalid escape, say): nothing ran
            assert (result.nfields, result.ntuples) == (1, 1), sql
            got = result.get_value(0, 0)
            assert got is not None
            # Postgres ran one string constant: the guard must have read that same constant.
            assert seen == got.decode(codec), (sql, seen, got)
            checked.append(1)

        same()
        assert len(checked) > 20  # most generated texts are valid, and were compared


def test_the_guard_and_postgres_agree_on_where_a_quote_ends(proxy: RunningProxy) -> None:
    """The examples behind issue 17's class 2, as they read with the pinned settings."""
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        for sql in ("SELECT 'a\\''", "SELECT E'a\\''''", "SELECT 'a\\'' || 'b'"):
            seen = guard_reading(sql)
            result: Any = conn.pgconn.exec_(sql.encode())
            if result.status == psycopg.pq.ExecStatus.TUPLES_OK:
                assert seen == result.get_value(0, 0).decode(), sql
