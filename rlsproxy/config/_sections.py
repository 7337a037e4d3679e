"""One function per top-level section: raw mapping in, validated dataclass out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, cast

from rlsproxy.config._reader import (
    _Absent,
    _algorithm,
    _boolean,
    _choice,
    _claim_path,
    _https_url,
    _integer,
    _join,
    _log_level,
    _number,
    _optional,
    _Reader,
    _role_name,
    _Section,
    _show,
    _string,
)
from rlsproxy.config.model import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    HMAC_MIN_BYTES,
    SSL_MODES,
    AuditConfig,
    AuditStatements,
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
        accept_unsafe_login_role=s.get("accept_unsafe_login_role", _boolean, d.accept_unsafe_login_role),
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
        service_max_size=s.get("service_max_size", _optional(_POSITIVE_INT), d.service_max_size),
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
        require_sub=s.get("require_sub", _boolean, d.require_sub),
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
        strongest = max(hmac, key=lambda a: HMAC_MIN_BYTES[a])
        need = HMAC_MIN_BYTES[strongest]
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
    return LogConfig(
        format=log_format,
        level=s.get("level", _log_level, d.level),
        connections=s.get("connections", _boolean, d.connections),
    )
