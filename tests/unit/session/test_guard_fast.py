"""The guard's plain-text shortcut may only ever say "allow" where the full parse agrees."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlsproxy.session.guard import ALLOW, classify
from rlsproxy.session.guard_fast import (
    _FAST_WORDS,
    _LEADING_WORD,
    _starts_with_fast_word,
    plain_text_allows,
    plainly_allowed,
)

# Pieces of SQL that matter to the guard or to the scanner, glued together at random.
_PIECES = [
    "select",
    "SELECT",
    "insert into t values (1)",
    "update t set a = 1",
    "delete from t",
    "with x as (select 1)",
    "begin",
    "commit",
    "end",
    "rollback",
    "abort",
    "start transaction",
    "show work_mem",
    "table t",
    "values (1)",
    "set",
    "reset",
    "role",
    "set role x",
    "set local role x",
    "reset all",
    "discard all",
    "do",
    "prepare p as",
    "execute p",
    "deallocate all",
    "vacuum",
    "analyze",
    "create function f() returns int as",
    "copy t from stdin",
    "set_config",
    "SET_CONFIG",
    "set_config('role', 'x', true)",
    "query_to_xml('set role x', true, true, '')",
    "ts_stat('x')",
    "prepared",
    "commit prepared 'x'",
    'U&"set\\005fconfig"',
    "u&'x'",
    "&",
    "'",
    "''",
    '"',
    "$1",
    "$$",
    "$a$",
    "--",
    "/*",
    "*/",
    ";",
    " ; ",
    "\n",
    "\t",
    "\xa0",
    "é",
    "_x",
    "$",
    "(",
    ")",
    ",",
    "1",
    "a",
    "x",
    "t",
    " ",
    "=",
    "rlsproxy.jwt",
    "current_setting('role')",
    "pg_catalog.",
]


@pytest.mark.parametrize("joiner", [" ", ""])  # glued without spaces, words run into each other
@settings(max_examples=3000, deadline=None)
@given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8))
def test_plain_text_allow_implies_the_full_guard_allows(joiner: str, pieces: list[str]) -> None:
    sql = joiner.join(pieces)
    if plain_text_allows(sql):
        verdict = classify(sql, fast=False)
        # A syntax error is Postgres' to report (the server sees the same text): anything else must be ALLOW.
        assert verdict.action == "allow" or verdict.rule == "syntax", (sql, verdict)


@settings(max_examples=3000, deadline=None)
@given(
    pieces=st.lists(st.sampled_from([*" \t\n\x0b\x1c;1x_$(", "select", "SHOW", "rollback", "Start", "end"]))
)
def test_the_quick_look_at_the_leading_word_agrees_with_the_regex(pieces: list[str]) -> None:
    text = "".join(pieces)
    match = _LEADING_WORD.match(text)
    regex_finds_one = match is not None and match.group(1).upper() in _FAST_WORDS
    assert _starts_with_fast_word(text.lower()) == regex_finds_one, text


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 48521;", True),
        ("  update t set a = a + -1 where id = 3 ;  ", True),
        ("set role postgres", False),  # leading word outside the fast set: full parse
        ("select 1; set role postgres", None),  # several statements: ask the scanner
        ("select 'a;b'", None),  # ';' inside a string still defers (the scanner knows better)
        ("select pg_catalog.set_config('role', 'x', true)", None),
        ("select 'set_config'", None),
        ("commit prepared 'x'", None),
        ('select U&"a"', None),
        ("SELECT$1", None),  # one identifier to Postgres
        ("SELECT_x", None),
        ("SELECT\xa0x", None),  # non-ASCII continues an identifier
        ("/* c */ select 1", None),
        ("select 1\0", None),
        ("\x0b\fSELECT 1", True),  # vertical tab and form feed are Postgres whitespace
        ("\x1cselect 1", None),  # \x1c is not
        ("SELECT1", None),
        ("selects from t", False),  # a longer word: not the keyword
    ],
)
def test_plain_text_decisions(sql: str, expected: bool | None) -> None:
    assert plain_text_allows(sql) is expected


def test_plain_text_and_scanner_agree_on_plain_dml() -> None:
    for sql in ["select 'x;y' from t", "select 'set_config'", "SELECT 1 -- ; set role x"]:
        assert plainly_allowed(sql) == (classify(sql, fast=False) == ALLOW)
