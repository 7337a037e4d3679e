"""The configuration: YAML in, validated frozen objects out.

Every problem in a file is collected and reported together, each named by its dotted key
(`jwt.algorithms[1]`), so `rlsproxy check-config` fixes a file in one round.
`${VAR}` anywhere in a string value is read from the environment; a missing variable is an error
that names both the key and the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import yaml

from rlsproxy.config._reader import _Reader, _StrictLoader, _yaml_problem
from rlsproxy.config._sections import (
    _SECTIONS,
    _audit,
    _http,
    _jwt,
    _limits,
    _listen,
    _log,
    _pool,
    _roles,
    _services,
    _upstream,
)
from rlsproxy.config.model import (
    ALGORITHMS,
    ASYMMETRIC_ALGORITHMS,
    EC_ALGORITHMS,
    HMAC_ALGORITHMS,
    HMAC_MIN_BYTES,
    LOG_LEVELS,
    RSA_ALGORITHMS,
    SSL_MODES,
    AuditConfig,
    AuditStatements,
    Config,
    ConfigError,
    HttpConfig,
    JwtConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    PoolConfig,
    PoolMode,
    RolesConfig,
    ServiceConfig,
    SslMode,
    TlsConfig,
    UpstreamConfig,
)

__all__ = [
    "ALGORITHMS",
    "ASYMMETRIC_ALGORITHMS",
    "EC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "HMAC_MIN_BYTES",
    "LOG_LEVELS",
    "RSA_ALGORITHMS",
    "SSL_MODES",
    "AuditConfig",
    "AuditStatements",
    "Config",
    "ConfigError",
    "HttpConfig",
    "JwtConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "PoolConfig",
    "PoolMode",
    "RolesConfig",
    "ServiceConfig",
    "SslMode",
    "TlsConfig",
    "UpstreamConfig",
    "describe",
    "load_config",
    "parse_config",
]

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
        f"{service_login}; connect timeout {_num(u.connect_timeout_s)}s; sslmode {u.sslmode}"
        + ("; UNSAFE login role accepted" if u.accept_unsafe_login_role else ""),
        f"pool:      {p.mode} mode, max {p.max_size} connections, acquire timeout {p.acquire_timeout_ms}ms, "
        f"idle timeout {_num(p.idle_timeout_s)}s"
        + (f"; service pool max {p.service_max_size or p.max_size}" if u.service_user else ""),
        f"jwt:       {', '.join(j.algorithms)}; {', '.join(keys) or 'no keys'}",
        f"           audience {_opt_list(j.audience)}, issuer {j.issuer or 'any'}, "
        f"role claim {j.role_claim}, required claims {_opt_list(j.required_claims or None)}, "
        f"leeway {_num(j.leeway_s)}s, sub {'required' if j.require_sub else 'optional'}, "
        f"in-band tokens {'on' if j.in_band else 'off'}",
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
