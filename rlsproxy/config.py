"""The configuration: YAML in, validated frozen objects out.

Every problem in a file is collected and reported together, each named by its dotted key
(`jwt.algorithms[1]`), so `rlsproxy check-config` fixes a file in one round.
`${VAR}` anywhere in a string value is read from the environment; a missing variable is an error
that names both the key and the variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PoolMode = Literal["session"]
AuditStatements = Literal["none", "fingerprint", "full"]


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 6432


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "postgres"
    user: str = "authenticator"
    password: str | None = None
    # Optional second login for service (bypass) sessions; see the bypass issue.
    service_user: str | None = None
    service_password: str | None = None
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class PoolConfig:
    mode: PoolMode = "session"
    max_size: int = 20
    acquire_timeout_ms: int = 5000
    idle_timeout_s: float = 300.0


@dataclass(frozen=True)
class JwtConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret: str | None = None
    public_keys: tuple[str, ...] = ()  # PEM file paths
    jwks_file: str | None = None
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


# load_config(path, env=os.environ) -> Config and parse_config(mapping, env) -> Config follow below.
