"""Reading a client's startup parameters: token, label, and the few settings a client may choose."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rlsproxy.errors import ProxyError
from rlsproxy.wire import pinned, sqlstate

JWT_PARAM = "rlsproxy.jwt"
LABEL_PARAM = "rlsproxy.label"

# Settings a client may choose at connection start. Everything else is refused rather than passed on,
# because a startup setting is applied before the proxy has any chance to look at it.
# row_security is deliberately absent: turning it off is how a client would ask to see everything.
ALLOWED_SETTINGS: frozenset[str] = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
        "search_path",
        "intervalstyle",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "bytea_output",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
        "standard_conforming_strings",
        "geqo",
        "jit",
        "work_mem",
    }
)

# Keys the connection machinery itself reads; they are not settings.
_STRUCTURAL = frozenset({"user", "database", "options", "replication"})
_FALSE_WORDS = frozenset({"false", "off", "no", "0", "f", "n"})
_MAX_NAME_IN_MESSAGE = 64


@dataclass(frozen=True)
class ClientStartup:
    user: str
    database: str
    token: str | None
    label: str | None
    anonymous_requested: bool
    settings: tuple[tuple[str, str], ...]
    application_name: str | None


def _fatal(message: str, code: str, hint: str | None = None) -> ProxyError:
    return ProxyError(message, code=code, fatal=True, hint=hint)


def _split_words(options: str) -> list[str]:
    """Postgres' pg_split_opts: whitespace separates words, a backslash takes the next char literally."""
    if "\\" not in options:
        return options.split()  # the same words (str.split and str.isspace agree on whitespace)
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
            in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(ch)
            in_word = True
    # A trailing lone backslash escapes nothing; Postgres drops it too.
    if in_word:
        words.append("".join(current))
    return words


def _name_value(arg: str, switch: str) -> tuple[str, str]:
    # Like Postgres' ParseLongOption: dashes in the name mean underscores (--search-path=x).
    # Values are never echoed in messages: the token may be one of them.
    name, sep, value = arg.partition("=")
    if not sep or not name:
        raise _fatal(f"startup option {switch} requires name=value", sqlstate.PROTOCOL_VIOLATION)
    return name.replace("-", "_").lower(), value


def parse_options(options: str) -> list[tuple[str, str]]:
    """Parse libpq's `options` startup parameter into (lower-cased name, value) pairs."""
    words = _split_words(options)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if len(word) < 2 or word[0] != "-":
            raise _fatal(
                "unexpected word in the startup options: only -c name=value and --name=value are accepted",
                sqlstate.PROTOCOL_VIOLATION,
            )
        switch = word[1]
        if switch == "c":
            arg = word[2:]
            if not arg:
                if i >= len(words):
                    raise _fatal("startup option -c requires name=value", sqlstate.PROTOCOL_VIOLATION)
                arg = words[i]
                i += 1
            pairs.append(_name_value(arg, "-c"))
        elif switch == "-":
            # A bare "--" would end getopt's switches and leave stray words; Postgres rejects those.
            if len(word) == 2:
                raise _fatal("startup option -- requires name=value", sqlstate.PROTOCOL_VIOLATION)
            pairs.append(_name_value(word[2:], "--"))
        else:
            raise _fatal(
                f"startup option -{switch} is not allowed through rlsproxy",
                sqlstate.INSUFFICIENT_PRIVILEGE,
                hint="Only -c name=value (or --name=value) settings can be passed in options.",
            )
    return pairs


def _shown(name: str) -> str:
    return name if len(name) <= _MAX_NAME_IN_MESSAGE else name[:_MAX_NAME_IN_MESSAGE] + "..."


def _refuse_setting(name: str) -> ProxyError:
    if name in ("role", "session_authorization"):
        return _fatal(
            f"cannot set {name} at startup: the role comes from the verified token",
            sqlstate.INSUFFICIENT_PRIVILEGE,
        )
    if name.startswith("request.jwt."):
        return _fatal(
            f"cannot set {_shown(name)} at startup: the claims come from the verified token",
            sqlstate.INSUFFICIENT_PRIVILEGE,
        )
    if name.startswith("rlsproxy."):
        return _fatal(
            f'unknown rlsproxy startup parameter "{_shown(name)}"',
            sqlstate.INSUFFICIENT_PRIVILEGE,
            hint=f"The known ones are {JWT_PARAM} and {LABEL_PARAM}.",
        )
    return _fatal(
        f'startup parameter "{_shown(name)}" is not allowed through rlsproxy',
        sqlstate.INSUFFICIENT_PRIVILEGE,
        hint="Settings that may be set at startup: " + ", ".join(sorted(ALLOWED_SETTINGS)) + ".",
    )


def read_startup(params: Mapping[str, str]) -> ClientStartup:
    """Validate a StartupMessage's parameters; raises a fatal ProxyError for anything refused."""
    user = params.get("user", "")
    if not user:
        raise _fatal(
            "no PostgreSQL user name specified in startup packet",
            sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )
    database = params.get("database") or user

    replication = params.get("replication")
    if replication is not None and replication.lower() not in _FALSE_WORDS:
        raise _fatal(
            "replication connections are not allowed through rlsproxy", sqlstate.INSUFFICIENT_PRIVILEGE
        )

    # Postgres applies `options` first and the direct parameters after, so a direct parameter wins.
    pairs = parse_options(params.get("options", ""))
    for key, value in params.items():
        name = key.lower()
        if name in _STRUCTURAL or name.startswith("_pq_."):
            continue
        pairs.append((name, value))

    token: str | None = None
    label: str | None = None
    jwt_seen = False
    settings: dict[str, str] = {}
    for name, value in pairs:
        if name == JWT_PARAM:
            jwt_seen = True
            token = value or None
        elif name == LABEL_PARAM:
            label = value or None
        elif name in ALLOWED_SETTINGS:
            why = pinned.refusal(name, value)
            if why is not None:  # see wire/pinned.py: the guard must read texts as Postgres will
                raise _fatal(why, sqlstate.FEATURE_NOT_SUPPORTED, hint=pinned.HINT)
            # Re-inserting moves the name to its last position: a later one wins, in place.
            settings.pop(name, None)
            settings[name] = value
        else:
            raise _refuse_setting(name)

    return ClientStartup(
        user=user,
        database=database,
        token=token,
        label=label,
        anonymous_requested=jwt_seen and token is None,
        settings=tuple(settings.items()),
        application_name=settings.get("application_name"),
    )
