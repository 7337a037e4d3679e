"""Session settings that change how Postgres reads a query text, and the values the proxy reads exactly.

The guard decides on its own reading of a text (pglast, libpg_query: UTF-8, standard-conforming
strings). Postgres reads the same bytes under the session's `client_encoding` and
`standard_conforming_strings`, so those two are pinned to values under which both readings agree:

- `client_encoding`: any encoding Postgres also accepts as a server encoding. In all of them a
  byte below 0x80 is always the ASCII character (multibyte characters use only bytes >= 0x80),
  so quotes, backslashes and dollars stand where the guard sees them. The client-only encodings
  (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB) have multibyte characters whose later
  bytes may be 0x5c (a backslash) or other ASCII: refused.
- `standard_conforming_strings`: on. Off makes a backslash escape a quote in every '...' literal.

`backslash_quote` is not pinned: Postgres' scanner reads `\'` in an E'' string as an escaped quote
whatever its value, and the setting only decides whether that is an error, so the token boundaries
do not move. Names are compared as Postgres compares them (case-insensitive); encoding names as
Postgres cleans them (letters and digits only, lower-cased: `Shift-JIS` is `shiftjis`).
"""

from __future__ import annotations

from typing import Final

CLIENT_ENCODING: Final = "client_encoding"
STANDARD_CONFORMING_STRINGS: Final = "standard_conforming_strings"
PINNED: Final = frozenset({CLIENT_ENCODING, STANDARD_CONFORMING_STRINGS})

# PostgreSQL's src/common/encnames.c pg_encname_tbl, the names of the client-only encodings.
_CLIENT_ONLY_ENCODINGS: Final = frozenset(
    {
        "big5",
        "gb18030",
        "gbk",
        "johab",
        "mskanji",
        "shiftjis",
        "shiftjis2004",
        "sjis",
        "uhc",
        "win932",
        "win936",
        "win949",
        "win950",
        "windows932",
        "windows936",
        "windows949",
        "windows950",
    }
)
# Postgres' parse_bool: a unique prefix of true/yes, "on", or "1" (case-insensitive).
_TRUE_WORDS: Final = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})


def clean_encoding_name(name: str) -> str:
    """Postgres' clean_encoding_name: letters and digits only, lower-cased."""
    return "".join(ch for ch in name if ch.isascii() and ch.isalnum()).lower()


def refusal(name: str, value: str | None) -> str | None:
    """Why the proxy cannot read texts the way Postgres would with `name` set to `value`, or None.

    `value` None stands for RESET / SET ... TO DEFAULT, which go back to the session's start value:
    the proxy's own (UTF8, on), or a client's startup value that passed this same check.
    """
    key = name.strip().lower()
    if key not in PINNED or value is None:
        return None
    if key == CLIENT_ENCODING:
        if clean_encoding_name(value) in _CLIENT_ONLY_ENCODINGS:
            return (
                f'client_encoding "{value[:64]}" is not supported through rlsproxy: in this encoding a '
                "multibyte character can contain a quote or backslash byte, so the proxy could not read "
                "query texts exactly as PostgreSQL does"
            )
        return None
    if value.strip().lower() not in _TRUE_WORDS:
        return (
            "standard_conforming_strings must stay on through rlsproxy: with it off a backslash escapes "
            "a quote in every string literal, and the proxy reads texts as PostgreSQL does with it on"
        )
    return None


HINT: Final = "use client_encoding UTF8 and standard_conforming_strings on (the defaults)"
