"""The configuration's shape: frozen dataclasses with their defaults, the error type, constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    # serve refuses to start (and a reload is rejected) when upstream.user fails the doctor's
    # login-role checks, unless this accepts the risk (logged as a warning at each check).
    accept_unsafe_login_role: bool = False


@dataclass(frozen=True)
class PoolConfig:
    mode: PoolMode = "session"
    max_size: int = 20
    acquire_timeout_ms: int = 5000
    idle_timeout_s: float = 300.0
    # Upstream connections for service (bypass) sessions, when upstream.service_user is set;
    # None = max_size. Jobs are few: a small pool keeps the connection budget honest.
    service_max_size: int | None = None


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
    # A token for any role but roles.anonymous must carry a non-empty string "sub" (auth.uid()).
    # Service identities (matched by `services`, always with a label) are exempt.
    require_sub: bool = True
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
    max_message_bytes: int = 64 * 1024 * 1024  # held whole; larger Binds and COPY data pass read by read
    guard_cache_size: int = 10_000
    shutdown_timeout_s: float = 30.0  # SIGTERM: how long open transactions may take to finish


@dataclass(frozen=True)
class LogConfig:
    format: Literal["json", "text"] = "json"
    level: str = "INFO"
    # One INFO line per client session that starts (PgBouncer's log_connections). Refusals are
    # always logged; off saves the line's cost (tens of µs) where clients connect per request.
    connections: bool = True


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
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
