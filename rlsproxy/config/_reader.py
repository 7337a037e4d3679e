"""Reading YAML values: environment substitution, typed converters, the collecting reader.

Every converter raises _Bad with a message; the reader records it under the dotted key and goes on,
so one run reports every problem in a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import yaml

from rlsproxy.config.model import ALGORITHMS, LOG_LEVELS

_ROLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
_CLAIM_PATH = re.compile(r"[^.]+(\.[^.]+)*")
_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE_TEXT = ("true", "yes", "on", "1")
_FALSE_TEXT = ("false", "no", "off", "0")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# YAML: a SafeLoader that also refuses duplicate keys (PyYAML silently keeps the last one).


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {first})", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def _yaml_problem(name: str, e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        what = e.problem or "syntax error"
        if e.context:
            what = f"{e.context}: {what}"
        return f"{name}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {what}"
    if isinstance(e, yaml.reader.ReaderError):
        return f"{name}: invalid YAML: cannot decode as {e.encoding} ({e.reason}) at byte {e.position}"
    return f"{name}: invalid YAML: {' '.join(str(e).split())}"


# --------------------------------------------------------------------------------------------
# Environment substitution


def _substitute(text: str, env: Mapping[str, str]) -> tuple[str, bool, list[str]]:
    """Replace ${VAR} from env; `$${` is a literal `${`. Returns (text, substituted, problems)."""
    problems: list[str] = []
    substituted = False

    def replace(m: re.Match[str]) -> str:
        nonlocal substituted
        token = m.group(0)
        if token == "$${":
            return "${"
        name = m.group(1)
        if name is None:
            problems.append("unclosed ${ (write $${ for a literal ${)")
        elif not _ENV_NAME.fullmatch(name):
            problems.append(f"${{{name}}} is not a valid environment variable reference")
        elif name not in env:
            problems.append(f"environment variable {name} is not set")
        else:
            substituted = True
            return env[name]
        return token

    return _ENV_REF.sub(replace, text), substituted, problems


# --------------------------------------------------------------------------------------------
# Value converters: each takes (value, came_from_env) and returns the value or raises _Bad.


class _Bad(Exception):
    """A value that does not fit; the message says what was expected and what was found."""


Conv = Callable[[object, bool], T]


def _show(value: object, secret: bool = False) -> str:
    """How a found value appears in a problem; secret values show only their type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if secret:
            return "a string"
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return "a number" if secret else repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"  # e.g. a date, which YAML makes of 2024-01-01


def _fail(expected: str, value: object, from_env: bool, secret: bool = False) -> NoReturn:
    hint = ""
    if isinstance(value, str) and not from_env and not secret and _FLOAT_TEXT.fullmatch(value.strip()):
        hint = " (a quoted string; remove the quotes)"
    raise _Bad(f"expected {expected}, got {_show(value, secret)}{hint}")


def _string(*, nonempty: bool = True, secret: bool = False) -> Conv[str]:
    def conv(value: object, from_env: bool) -> str:
        if not isinstance(value, str):
            _fail("a string", value, from_env, secret)
        if nonempty and not value.strip():
            raise _Bad("must not be empty")
        return value

    return conv


def _optional(inner: Conv[T]) -> Conv[T | None]:
    def conv(value: object, from_env: bool) -> T | None:
        return None if value is None else inner(value, from_env)

    return conv


def _integer(minimum: int, maximum: int | None = None, *, what: str) -> Conv[int]:
    def conv(value: object, from_env: bool) -> int:
        if isinstance(value, str) and from_env and _INT_TEXT.fullmatch(value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(what, value, from_env)
        if value < minimum or (maximum is not None and value > maximum):
            _fail(what, value, from_env)
        return value

    return conv


def _number(minimum: float, *, exclusive: bool, what: str) -> Conv[float]:
    def conv(value: object, from_env: bool) -> float:
        if isinstance(value, str) and from_env and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            _fail(what, value, from_env)
        if value < minimum or (exclusive and value == minimum):
            _fail(what, value, from_env)
        return float(value)

    return conv


def _boolean(value: object, from_env: bool) -> bool:
    if isinstance(value, str) and from_env:
        text = value.strip().lower()
        if text in _TRUE_TEXT or text in _FALSE_TEXT:
            return text in _TRUE_TEXT
    if not isinstance(value, bool):
        _fail("true or false", value, from_env)
    return value


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    options = list(options)
    folded = [o for o in options if o.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _choice(options: tuple[str, ...], refused: Mapping[str, str] | None = None) -> Conv[str]:
    """One of `options`; `refused` maps known-but-unsupported values to their explanation."""

    def conv(value: object, from_env: bool) -> str:
        listed = ", ".join(f'"{o}"' for o in options)
        if not isinstance(value, str):
            _fail(f"one of {listed}", value, from_env)
        if value in options:
            return value
        if refused and value in refused:
            raise _Bad(refused[value])
        raise _Bad(f"expected one of {listed}, got {_show(value)}{_did_you_mean(value, options)}")

    return conv


def _log_level(value: object, from_env: bool) -> str:
    if isinstance(value, str):
        value = value.upper()
    return _choice(LOG_LEVELS)(value, from_env)


def _algorithm(value: object, from_env: bool) -> str:
    if not isinstance(value, str):
        _fail("an algorithm name", value, from_env)
    if value.lower() == "none":
        raise _Bad(f"{_show(value)} is never accepted")
    if value not in ALGORITHMS:
        raise _Bad(f"unknown algorithm {_show(value)}{_did_you_mean(value, ALGORITHMS)}")
    return value


def _role_name(value: object, from_env: bool) -> str:
    if not isinstance(value, str):
        _fail("a role name", value, from_env)
    if value.lower().startswith("pg_"):
        raise _Bad(f"{_show(value)} is not allowed: role names starting with pg_ are reserved by PostgreSQL")
    if not _ROLE_NAME.fullmatch(value):
        raise _Bad(
            f"{_show(value)} is not a valid role name (use letters, digits, _ and -, at most 63 characters)"
        )
    return value


def _https_url(value: object, from_env: bool) -> str:
    text = _string()(value, from_env)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "https":
        raise _Bad(
            f"expected an https:// URL, got {_show(text)} (keys fetched over plain HTTP could be forged)"
        )
    if not parts.hostname:
        raise _Bad(f"expected an https:// URL with a host, got {_show(text)}")
    return text


def _claim_path(value: object, from_env: bool) -> str:
    text = _string()(value, from_env)
    if not _CLAIM_PATH.fullmatch(text):
        raise _Bad(f'expected a dotted claim path like "app_metadata.role", got {_show(text)}')
    return text


# --------------------------------------------------------------------------------------------
# The reader: carries the environment, base directory and the problems found so far.


class _Absent:
    """Marks a key that is not in the file (distinct from an explicit null)."""


_ABSENT = _Absent()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    def __init__(self, env: Mapping[str, str], base_dir: str | None) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []
        self._bad: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self._bad.add(path)

    def ok(self, path: str) -> bool:
        """True when nothing at or below `path` was reported (used to skip cross-checks)."""
        return not any(b == path or b.startswith((path + ".", path + "[")) for b in self._bad)

    def convert(self, path: str, raw: object, conv: Conv[T]) -> T | _Absent:
        """Substitute ${VAR} in a string, then convert; on a problem report it and return _ABSENT."""
        from_env = False
        if isinstance(raw, str):
            raw, from_env, problems = _substitute(raw, self.env)
            for message in problems:
                self.problem(path, message)
            if problems:
                return _ABSENT
        try:
            return conv(raw, from_env)
        except _Bad as e:
            self.problem(path, str(e))
            return _ABSENT

    def value(self, path: str, raw: object, conv: Conv[T], default: T) -> T:
        converted = self.convert(path, raw, conv)
        return default if isinstance(converted, _Absent) else converted

    def items(
        self, path: str, raw: object, conv: Conv[T], *, nonempty: bool, what: str
    ) -> tuple[T, ...] | None:
        """A list whose items each convert; None if `raw` is not a list. Bad items are left out."""
        if not isinstance(raw, list):
            self.problem(path, f"expected {what}, got {_show(raw)}")
            return None
        if nonempty and not raw:
            self.problem(path, f"must not be empty (expected {what})")
        out: list[T] = []
        for i, item in enumerate(raw):
            item_path = f"{path}[{i}]"
            converted = self.convert(item_path, item, conv)
            if not isinstance(converted, _Absent):
                out.append(converted)
        return tuple(out)

    def section(self, path: str, raw: object, known: type | tuple[str, ...]) -> _Section | None:
        """A mapping with only `known` keys (field names of a dataclass); None if absent or invalid."""
        if isinstance(raw, _Absent) or (raw is None and path):
            return None
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            expected = "a mapping of sections" if not path else "a mapping"
            self.problem(path or "config", f"expected {expected}, got {_show(raw)}")
            return None
        keys = known if isinstance(known, tuple) else tuple(f.name for f in dataclasses.fields(known))
        return _Section(self, path, raw, keys)

    def file(self, value: object, from_env: bool) -> str:
        """A path to a readable file; relative paths resolve against the config file's directory."""
        given = _string()(value, from_env)
        full = given if self.base_dir is None else os.path.join(self.base_dir, given)
        quoted = json.dumps(given, ensure_ascii=False)
        shown = quoted if full == given else f"{quoted} (looked for {full})"
        if not os.path.exists(full):
            raise _Bad(f"file {shown} does not exist")
        if not os.path.isfile(full):
            raise _Bad(f"{shown} is not a file")
        try:
            with open(full, "rb"):
                pass
        except OSError as e:
            raise _Bad(f"cannot read {shown}: {e.strerror or e}") from None
        return full


class _Section:
    """One mapping in the file; unknown keys are reported when it is created."""

    def __init__(self, reader: _Reader, path: str, data: Mapping[Any, Any], known: tuple[str, ...]) -> None:
        self.r = reader
        self.path = path
        self.data = data
        for key in data:
            if key not in known:
                name = str(key)
                close = difflib.get_close_matches(name, known, n=1)
                listed = ", ".join(known)
                hint = f' (did you mean "{close[0]}"?)' if close else f" (expected one of: {listed})"
                if isinstance(key, bool):
                    hint += "; YAML reads an unquoted on/off/yes/no as true/false"
                reader.problem(_join(path, name), f"unknown key{hint}")

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def raw(self, name: str) -> object:
        return self.data.get(name, _ABSENT)

    def get(self, name: str, conv: Conv[T], default: T) -> T:
        raw = self.raw(name)
        return default if isinstance(raw, _Absent) else self.r.value(self.key(name), raw, conv, default)

    def strings(
        self, name: str, conv: Conv[str], default: tuple[str, ...], *, nonempty: bool, what: str
    ) -> tuple[str, ...]:
        raw = self.raw(name)
        if isinstance(raw, _Absent):
            return default
        got = self.r.items(self.key(name), raw, conv, nonempty=nonempty, what=what)
        return default if got is None else got

    def require(self, names: tuple[str, ...], what: Mapping[str, str]) -> None:
        for name in names:
            if name not in self.data:
                self.r.problem(self.key(name), f"required ({what[name]})")
