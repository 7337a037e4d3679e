"""The configuration: YAML in, validated frozen objects out.

Every problem in a file is collected and reported together, each named by its dotted key
(`jwt.algorithms[1]`), so `rlsproxy check-config` fixes a file in one round.
`${VAR}` anywhere in a string value is read from the environment; a missing variable is an error
that names both the key and the variable.
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
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar, cast

import yaml

PoolMode = Literal["session"]
AuditStatements = Literal["none", "fingerprint", "full"]
SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[SslMode, ...] = ("disable", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class TlsConfig:
    """The client-facing TLS certificate (PEM chain) and key; `require` refuses plaintext clients."""

    cert: str
    key: str
    require: bool = False


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 6432
    tls: TlsConfig | None = None
    # A token asked for as a cleartext password may cross the network unencrypted only when this is set.
    allow_cleartext_password_without_tls: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "postgres"
    user: str = "authenticator"
    password: str | None = field(default=None, repr=False)  # repr=False: never in logs
    # Optional second login for service (bypass) sessions; see the bypass issue.
    service_user: str | None = None
    service_password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    sslmode: SslMode = "prefer"  # libpq's meanings
    sslrootcert: str | None = None  # CA bundle for verify-ca/verify-full (None: the system store)


@dataclass(frozen=True)
class PoolConfig:
    mode: PoolMode = "session"
    max_size: int = 20
    acquire_timeout_ms: int = 5000
    idle_timeout_s: float = 300.0


@dataclass(frozen=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret: str | None = field(default=None, repr=False)
    public_keys: tuple[str, ...] = ()  # PEM file paths
    jwks_file: str | None = None
    jwks_url: str | None = None  # https only; fetched, cached and refreshed by rlsproxy.jwks
    jwks_ca_file: str | None = None  # CA bundle to verify jwks_url with (None: the system store)
    jwks_refresh_s: float = 300.0
    audience: tuple[str, ...] | None = None
    issuer: str | None = None
    leeway_s: float = 30.0
    role_claim: str = "role"  # dotted path, e.g. app_metadata.role
    required_claims: tuple[str, ...] = ("exp",)
    in_band: bool = True
    cache_size: int = 10_000


@dataclass(frozen=True)
class RolesConfig:
    allowed: tuple[str, ...] = ("anon", "authenticated")
    default: str | None = "authenticated"
    anonymous: str | None = "anon"


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9432


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    match: tuple[tuple[str, str], ...]  # (claim, value) pairs; every one must equal
    roles: tuple[str, ...]
    labels: tuple[str, ...]  # glob patterns


@dataclass(frozen=True)
class AuditConfig:
    path: str = "-"
    statements: AuditStatements = "fingerprint"


@dataclass(frozen=True)
class LimitsConfig:
    startup_timeout_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    guard_cache_size: int = 10_000
    shutdown_timeout_s: float = 30.0  # SIGTERM: how long open transactions may take to finish


@dataclass(frozen=True)
class LogConfig:
    format: Literal["json", "text"] = "json"
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = field(default_factory=ListenConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    roles: RolesConfig = field(default_factory=RolesConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    services: tuple[ServiceConfig, ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)


class ConfigError(Exception):
    """Every problem found in one file, each a line naming its dotted key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------------
# Constants

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES256K", "ES384", "ES512", "EdDSA")
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS + EC_ALGORITHMS
ALGORITHMS = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
# RFC 7518 section 3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

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
# Public API


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; relative key file paths resolve against its directory."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([f"{name}: config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, not a config file"]) from None
    except OSError as e:
        raise ConfigError([f"{name}: cannot read config file ({e.strerror or e})"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: still safe
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(name, e)]) from None
    base_dir = os.path.dirname(os.path.abspath(name))
    return parse_config(data, os.environ if env is None else env, base_dir=base_dir)


def parse_config(
    data: object, env: Mapping[str, str], *, base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Validate an already-parsed YAML document (None means an empty file).

    `base_dir` is where relative key file paths are resolved (the working directory if None).
    Raises ConfigError listing every problem found.
    """
    r = _Reader(env, None if base_dir is None else os.fspath(base_dir))
    root = r.section("", data, _SECTIONS)
    if root is None:
        raise ConfigError(r.problems)
    listen = _listen(r, r.section("listen", root.raw("listen"), ListenConfig))
    upstream = _upstream(r, r.section("upstream", root.raw("upstream"), UpstreamConfig))
    pool = _pool(r.section("pool", root.raw("pool"), PoolConfig))
    jwt = _jwt(r, r.section("jwt", root.raw("jwt"), JwtConfig))
    roles = _roles(r, r.section("roles", root.raw("roles"), RolesConfig))
    http = _http(r, r.section("http", root.raw("http"), HttpConfig), listen)
    services = _services(r, root.raw("services"))
    audit = _audit(r.section("audit", root.raw("audit"), AuditConfig), r.base_dir)
    limits = _limits(r.section("limits", root.raw("limits"), LimitsConfig))
    log = _log(r.section("log", root.raw("log"), LogConfig))
    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        listen=listen,
        upstream=upstream,
        pool=pool,
        jwt=jwt,
        roles=roles,
        http=http,
        services=services,
        audit=audit,
        limits=limits,
        log=log,
    )


def describe(config: Config) -> str:
    """A short human summary for `rlsproxy check-config`; secrets show only as set/not set."""
    u, p, j, ro, h = config.upstream, config.pool, config.jwt, config.roles, config.http
    a, lim = config.audit, config.limits
    service_login = (
        f"; service login {u.service_user} (password {_is_set(u.service_password)})" if u.service_user else ""
    )
    keys = [f"secret {_is_set(j.secret)}"] if j.secret is not None else []
    keys += [f"public key {k}" for k in j.public_keys]
    keys += [f"JWKS {j.jwks_file}"] if j.jwks_file else []
    keys += [f"JWKS {j.jwks_url} (refreshed every {_num(j.jwks_refresh_s)}s)"] if j.jwks_url else []
    lc = config.listen
    tls = "no TLS" if lc.tls is None else f"TLS {'required' if lc.tls.require else 'offered'} ({lc.tls.cert})"
    cleartext = "allowed" if lc.allow_cleartext_password_without_tls else "loopback only"
    lines = [
        f"listen:    {_hostport(lc.host, lc.port)}, {tls}; token as password without TLS: {cleartext}",
        f"upstream:  {u.user}@{_hostport(u.host, u.port)}/{u.database} (password {_is_set(u.password)})"
        f"{service_login}; connect timeout {_num(u.connect_timeout_s)}s; sslmode {u.sslmode}",
        f"pool:      {p.mode} mode, max {p.max_size} connections, acquire timeout {p.acquire_timeout_ms}ms, "
        f"idle timeout {_num(p.idle_timeout_s)}s",
        f"jwt:       {', '.join(j.algorithms)}; {', '.join(keys) or 'no keys'}",
        f"           audience {_opt_list(j.audience)}, issuer {j.issuer or 'any'}, "
        f"role claim {j.role_claim}, required claims {_opt_list(j.required_claims or None)}, "
        f"leeway {_num(j.leeway_s)}s, in-band tokens {'on' if j.in_band else 'off'}",
        f"roles:     allowed {', '.join(ro.allowed)}; default {ro.default or 'none (token must name one)'}; "
        f"anonymous {ro.anonymous or 'refused'}",
        f"http:      {_hostport(h.host, h.port) if h.enabled else 'disabled'}",
        f"services:  {len(config.services) or 'none'}",
    ]
    for s in config.services:
        match = ", ".join(f"{claim}={value}" for claim, value in s.match)
        lines.append(
            f"  - {s.name}: when {match} -> roles {', '.join(s.roles)}; labels {', '.join(s.labels)}"
        )
    lines += [
        f"audit:     {'stdout' if a.path == '-' else a.path}, statements {a.statements}",
        f"limits:    startup timeout {_num(lim.startup_timeout_s)}s, "
        f"max message {lim.max_message_bytes} bytes, guard cache {lim.guard_cache_size}, "
        f"shutdown timeout {_num(lim.shutdown_timeout_s)}s",
        f"log:       {config.log.format}, level {config.log.level}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# describe() helpers


def _is_set(secret: str | None) -> str:
    return "not set" if not secret else "set"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _opt_list(values: tuple[str, ...] | None) -> str:
    return ", ".join(values) if values else "any"


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


# --------------------------------------------------------------------------------------------
# Sections

_SECTIONS = ("listen", "upstream", "pool", "jwt", "roles", "http", "services", "audit", "limits", "log")
_HOST = _string()
_PORT = _integer(1, 65535, what="a port number (1-65535)")
_POSITIVE_INT = _integer(1, what="a positive integer")
_POSITIVE = _number(0, exclusive=True, what="a positive number")
_NON_NEGATIVE = _number(0, exclusive=False, what="a number >= 0")
_AT_LEAST_ONE = _number(1, exclusive=False, what="a number >= 1")


_TLS_WHAT = {"cert": "a PEM certificate (chain) file", "key": "its PEM private key file"}


def _listen(r: _Reader, s: _Section | None) -> ListenConfig:
    d = ListenConfig()
    if s is None:
        return d
    return ListenConfig(
        host=s.get("host", _HOST, d.host),
        port=s.get("port", _PORT, d.port),
        tls=_tls(r, r.section(s.key("tls"), s.raw("tls"), ("cert", "key", "require"))),
        allow_cleartext_password_without_tls=s.get(
            "allow_cleartext_password_without_tls", _boolean, d.allow_cleartext_password_without_tls
        ),
    )


def _tls(r: _Reader, s: _Section | None) -> TlsConfig | None:
    """listen.tls: null (no TLS) or a mapping with cert and key (files) and require."""
    if s is None:
        return None
    s.require(("cert", "key"), _TLS_WHAT)
    return TlsConfig(
        cert=s.get("cert", r.file, ""),
        key=s.get("key", r.file, ""),
        require=s.get("require", _boolean, False),
    )


_REFUSED_SSLMODES = {"allow": '"allow" (plaintext first, TLS if refused) is not supported; use "prefer"'}


def _upstream(r: _Reader, s: _Section | None) -> UpstreamConfig:
    d = UpstreamConfig()
    if s is None:
        return d
    secret = _optional(_string(nonempty=False, secret=True))
    c = UpstreamConfig(
        host=s.get("host", _HOST, d.host),
        port=s.get("port", _PORT, d.port),
        database=s.get("database", _string(), d.database),
        user=s.get("user", _string(), d.user),
        password=s.get("password", secret, d.password),
        service_user=s.get("service_user", _optional(_string()), d.service_user),
        service_password=s.get("service_password", secret, d.service_password),
        connect_timeout_s=s.get("connect_timeout_s", _POSITIVE, d.connect_timeout_s),
        sslmode=cast(SslMode, s.get("sslmode", _choice(SSL_MODES, _REFUSED_SSLMODES), str(d.sslmode))),
        sslrootcert=s.get("sslrootcert", _optional(r.file), d.sslrootcert),
    )
    if c.sslrootcert is not None and c.sslmode == "disable" and r.ok(s.key("sslmode")):
        r.problem(s.key("sslrootcert"), 'has no effect with upstream.sslmode "disable"')
    if not (r.ok(s.key("service_user")) and r.ok(s.key("service_password"))):
        return c
    if c.service_user and not c.service_password:
        r.problem(s.key("service_password"), "required when upstream.service_user is set")
    if c.service_password is not None and not c.service_user:
        r.problem(s.key("service_password"), "set but upstream.service_user is not; set both or neither")
    if c.service_user and c.service_user == c.user and r.ok(s.key("user")):
        r.problem(s.key("service_user"), "must differ from upstream.user (the service login bypasses RLS)")
    return c


def _pool(s: _Section | None) -> PoolConfig:
    d = PoolConfig()
    if s is None:
        return d
    refused = {"transaction": '"transaction" pooling is not available yet'}
    return PoolConfig(
        mode=cast(PoolMode, s.get("mode", _choice(("session",), refused), str(d.mode))),
        max_size=s.get("max_size", _POSITIVE_INT, d.max_size),
        acquire_timeout_ms=s.get("acquire_timeout_ms", _POSITIVE_INT, d.acquire_timeout_ms),
        idle_timeout_s=s.get("idle_timeout_s", _POSITIVE, d.idle_timeout_s),
    )


def _jwt(r: _Reader, s: _Section | None) -> JwtConfig:
    d = JwtConfig()
    c = d if s is None else _jwt_fields(r, s, d)
    _jwt_keys(r, c)
    return c


def _jwt_fields(r: _Reader, s: _Section, d: JwtConfig) -> JwtConfig:
    algorithms = s.strings("algorithms", _algorithm, d.algorithms, nonempty=True, what="a list of algorithms")
    seen: set[str] = set()
    for i, alg in enumerate(algorithms):
        if alg in seen:
            r.problem(f"{s.key('algorithms')}[{i}]", f'"{alg}" is listed twice')
        seen.add(alg)
    return JwtConfig(
        algorithms=algorithms,
        secret=s.get("secret", _optional(_string(nonempty=False, secret=True)), d.secret),
        public_keys=s.strings(
            "public_keys", r.file, d.public_keys, nonempty=False, what="a list of file paths"
        ),
        jwks_file=s.get("jwks_file", _optional(r.file), d.jwks_file),
        jwks_url=s.get("jwks_url", _optional(_https_url), d.jwks_url),
        jwks_ca_file=s.get("jwks_ca_file", _optional(r.file), d.jwks_ca_file),
        jwks_refresh_s=s.get("jwks_refresh_s", _AT_LEAST_ONE, d.jwks_refresh_s),
        audience=_audience(r, s, d.audience),
        issuer=s.get("issuer", _optional(_string()), d.issuer),
        leeway_s=s.get("leeway_s", _NON_NEGATIVE, d.leeway_s),
        role_claim=s.get("role_claim", _claim_path, d.role_claim),
        required_claims=s.strings(
            "required_claims", _string(), d.required_claims, nonempty=False, what="a list of claim names"
        ),
        in_band=s.get("in_band", _boolean, d.in_band),
        cache_size=s.get("cache_size", _POSITIVE_INT, d.cache_size),
    )


def _audience(r: _Reader, s: _Section, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    raw = s.raw("audience")
    if isinstance(raw, list):
        if not raw:
            r.problem(s.key("audience"), "an empty list would refuse every token; use null to skip the check")
            return default
        return s.strings("audience", _string(), (), nonempty=True, what="a list of strings")
    if isinstance(raw, _Absent):
        return default
    one = r.convert(s.key("audience"), raw, _optional(_string()))
    if isinstance(one, _Absent):
        return default
    return None if one is None else (one,)


def _jwt_keys(r: _Reader, c: JwtConfig) -> None:
    """Every algorithm in use needs a key source; HMAC secrets must be long enough."""
    hmac = [a for a in c.algorithms if a in HMAC_ALGORITHMS]
    if hmac and r.ok("jwt.secret"):
        strongest = max(hmac, key=lambda a: _HMAC_MIN_BYTES[a])
        need = _HMAC_MIN_BYTES[strongest]
        if c.secret is None:
            r.problem("jwt.secret", f"required because jwt.algorithms includes {hmac[0]}")
        elif (got := len(c.secret.encode("utf-8"))) < need:
            r.problem("jwt.secret", f"{strongest} needs at least {need} bytes of secret, got {got}")
    asymmetric = [a for a in c.algorithms if a in ASYMMETRIC_ALGORITHMS]
    has_key = bool(c.public_keys) or c.jwks_file is not None or c.jwks_url is not None
    sources = ("jwt.public_keys", "jwt.jwks_file", "jwt.jwks_url")
    if asymmetric and not has_key and all(r.ok(k) for k in sources):
        r.problem(
            "jwt.public_keys",
            f"{asymmetric[0]} needs a public key: set jwt.public_keys, jwt.jwks_file or jwt.jwks_url",
        )
    if c.jwks_ca_file is not None and c.jwks_url is None and r.ok("jwt.jwks_url"):
        r.problem("jwt.jwks_ca_file", "set but jwt.jwks_url is not")


def _roles(r: _Reader, s: _Section | None) -> RolesConfig:
    d = RolesConfig()
    if s is None:
        return d
    allowed = s.strings("allowed", _role_name, d.allowed, nonempty=True, what="a list of role names")
    _no_duplicates(r, s.key("allowed"), allowed, "role")
    c = RolesConfig(
        allowed=allowed,
        default=s.get("default", _optional(_role_name), d.default),
        anonymous=s.get("anonymous", _optional(_role_name), d.anonymous),
    )
    if r.ok(s.key("allowed")):
        for name, value in (("default", c.default), ("anonymous", c.anonymous)):
            if value is not None and value not in c.allowed and r.ok(s.key(name)):
                r.problem(s.key(name), f'"{value}" is not in roles.allowed')
    return c


def _no_duplicates(r: _Reader, path: str, values: tuple[str, ...], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            r.problem(path, f'{what} "{value}" is listed twice')
        seen.add(value)


def _http(r: _Reader, s: _Section | None, listen: ListenConfig) -> HttpConfig:
    d = HttpConfig()
    c = d
    if s is not None:
        c = HttpConfig(
            enabled=s.get("enabled", _boolean, d.enabled),
            host=s.get("host", _HOST, d.host),
            port=s.get("port", _PORT, d.port),
        )
    if c.enabled and (c.host, c.port) == (listen.host, listen.port) and r.ok("http") and r.ok("listen"):
        r.problem("http.port", f"{c.port} is also listen.port on the same host")
    return c


_SERVICE_KEYS = ("name", "match", "roles", "labels")
_SERVICE_WHAT = {
    "name": "a service name",
    "match": "a mapping of claim to value",
    "roles": "a list of role names",
    "labels": "a list of label glob patterns",
}


def _services(r: _Reader, raw: object) -> tuple[ServiceConfig, ...]:
    if isinstance(raw, _Absent) or raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("services", f"expected a list of services, got {_show(raw)}")
        return ()
    services: list[ServiceConfig] = []
    first_seen: dict[str, str] = {}
    for i, item in enumerate(raw):
        path = f"services[{i}]"
        s = r.section(path, item, _SERVICE_KEYS)
        if item is None:
            r.problem(path, "expected a mapping, got null")
        if s is None:
            continue
        s.require(_SERVICE_KEYS, _SERVICE_WHAT)
        service = ServiceConfig(
            name=s.get("name", _string(), ""),
            match=_service_match(r, s),
            roles=s.strings("roles", _role_name, (), nonempty=True, what=_SERVICE_WHAT["roles"]),
            labels=s.strings("labels", _string(), (), nonempty=True, what=_SERVICE_WHAT["labels"]),
        )
        if service.name in first_seen:
            also = first_seen[service.name]
            r.problem(s.key("name"), f'duplicate service name "{service.name}" (also {also})')
        elif service.name:
            first_seen[service.name] = path
        services.append(service)
    return tuple(services)


def _service_match(r: _Reader, s: _Section) -> tuple[tuple[str, str], ...]:
    raw = s.raw("match")
    path = s.key("match")
    if isinstance(raw, _Absent):
        return ()
    if not isinstance(raw, Mapping):
        r.problem(path, f"expected {_SERVICE_WHAT['match']}, got {_show(raw)}")
        return ()
    if not raw:
        r.problem(path, "must not be empty (a service with no claims to match would match every token)")
    pairs: list[tuple[str, str]] = []
    for claim, value in raw.items():
        if not isinstance(claim, str) or not claim:
            r.problem(path, f"claim names must be non-empty strings, got {_show(claim)}")
            continue
        converted = r.value(_join(path, claim), value, _string(), "")
        if converted:
            pairs.append((claim, converted))
    return tuple(sorted(pairs))


def _audit(s: _Section | None, base_dir: str | None) -> AuditConfig:
    d = AuditConfig()
    if s is None:
        return d
    statements = s.get("statements", _choice(("none", "fingerprint", "full")), str(d.statements))
    path = s.get("path", _string(), d.path)
    # Like key files, a relative path is relative to the config file, not to wherever the proxy started.
    # It need not exist yet (it is created); if it cannot be written, bypass sessions are refused.
    if path != "-" and base_dir is not None and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return AuditConfig(path=path, statements=cast(AuditStatements, statements))


def _limits(s: _Section | None) -> LimitsConfig:
    d = LimitsConfig()
    if s is None:
        return d
    return LimitsConfig(
        startup_timeout_s=s.get("startup_timeout_s", _POSITIVE, d.startup_timeout_s),
        max_message_bytes=s.get("max_message_bytes", _POSITIVE_INT, d.max_message_bytes),
        guard_cache_size=s.get("guard_cache_size", _POSITIVE_INT, d.guard_cache_size),
        shutdown_timeout_s=s.get("shutdown_timeout_s", _NON_NEGATIVE, d.shutdown_timeout_s),
    )


def _log(s: _Section | None) -> LogConfig:
    d = LogConfig()
    if s is None:
        return d
    log_format = cast(Literal["json", "text"], s.get("format", _choice(("json", "text")), str(d.format)))
    return LogConfig(format=log_format, level=s.get("level", _log_level, d.level))
