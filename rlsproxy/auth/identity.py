"""Turning a verified token (or none) into the Postgres role and claims a session runs as."""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.config import JwtConfig, RolesConfig, ServiceConfig
from rlsproxy.errors import AuthError
from rlsproxy.wire import sqlstate

_CODE = sqlstate.INVALID_AUTHORIZATION_SPECIFICATION
_MAX_SHOWN = 64
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Identity:
    role: str
    claims_json: str  # exactly what request.jwt.claims is set to
    subject: str | None
    anonymous: bool
    expires_at: float | None
    service: str | None = None  # the service name when this is a bypass identity
    label: str | None = None


class BypassDenied(AuthError):
    """A refused attempt at a role outside the allowlist; carries what the audit line needs."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        service: str | None,
        requested_role: str,
        label: str | None,
        subject: str | None,
    ) -> None:
        super().__init__(reason, message, code=_CODE)
        self.service = service
        self.requested_role = requested_role
        self.label = label
        self.subject = subject


def _shown(value: str) -> str:
    return value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path ("app_metadata.role"), or _MISSING.

    A top-level key spelled with dots (namespaced claims such as "https://x.io/role") wins over the path.
    """
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _compact(claims: dict[str, Any]) -> str:
    return json.dumps(claims, separators=(",", ":"), sort_keys=False, ensure_ascii=False)


class Authenticator:
    """Maps a token to an Identity under the roles allowlist and the service (bypass) rules."""

    def __init__(
        self,
        jwt_cfg: JwtConfig,
        roles_cfg: RolesConfig,
        services: tuple[ServiceConfig, ...],
        verifier: TokenVerifier,
    ) -> None:
        self._role_claim = jwt_cfg.role_claim
        self._require_sub = jwt_cfg.require_sub
        self._roles = roles_cfg
        self._allowed = frozenset(roles_cfg.allowed)
        # A service without match rules would match every token; it is never considered.
        self._services = tuple(s for s in services if s.match)
        self._verifier = verifier
        self._anonymous: Identity | None = None
        if roles_cfg.anonymous is not None:
            self._anonymous = Identity(
                role=roles_cfg.anonymous,
                claims_json=_compact({"role": roles_cfg.anonymous}),
                subject=None,
                anonymous=True,
                expires_at=None,
            )
        # (sha256(token), label) -> (identity, exp + leeway); successes only, bounded like the verifier's.
        self._cache: OrderedDict[tuple[bytes, str | None], tuple[Identity, float]] = OrderedDict()

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier

    def clear_cache(self) -> None:
        """Forget every verified token (a signing key was withdrawn): each is verified again on next use."""
        self._cache.clear()
        self._verifier.clear_cache()

    def authenticate(self, token: str | None, *, label: str | None = None) -> Identity:
        if token is None:
            if self._anonymous is None:
                raise AuthError(
                    "no_token", "a token is required: pass rlsproxy.jwt or use it as the password", code=_CODE
                )
            return self._anonymous
        key = (hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest(), label)
        hit = self._cache.get(key)
        if hit is not None:
            if self._verifier.clock() < hit[1]:
                return hit[0]
            del self._cache[key]
        claims = self._verifier.verify(token)
        identity = self._identity(claims, label)
        size = self._verifier.cache_size
        if size > 0:
            if len(self._cache) >= size:
                self._cache.popitem(last=False)
            exp = identity.expires_at
            deadline = exp + self._verifier.leeway_s if exp is not None else math.inf
            self._cache[key] = (identity, deadline)
        return identity

    def _identity(self, claims: dict[str, Any], label: str | None) -> Identity:
        sub = claims.get("sub")
        subject = sub if isinstance(sub, str) else None
        role = self._role(claims)
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None

        def identity(service: str | None = None) -> Identity:
            return Identity(
                role=role,
                claims_json=_compact(claims),
                subject=subject,
                anonymous=False,
                expires_at=expires_at,
                service=service,
                label=label if service else None,
            )

        if label is None and role in self._allowed:
            if self._require_sub and not subject and role != self._roles.anonymous:
                raise AuthError(
                    "missing_claim",
                    f'token has no subject (sub): role "{_shown(role)}" needs a non-empty "sub" claim '
                    "(jwt.require_sub)",
                    code=_CODE,
                )
            return identity()

        def denied(reason: str, message: str, service: str | None) -> BypassDenied:
            return BypassDenied(
                reason, message, service=service, requested_role=role, label=label, subject=subject
            )

        matching = [s for s in self._services if self._matches(s, claims)]
        if not matching:
            if label is not None:
                raise denied(
                    "bypass_not_a_service",
                    "a label (rlsproxy.label) is only for service identities, and this token "
                    "matches no configured service",
                    None,
                )
            raise denied("role_not_allowed", f'role "{_shown(role)}" is not allowed', None)
        # Several services may match the same token; prefer one that grants the role.
        service = next((s for s in matching if role in s.roles), matching[0])
        if role not in service.roles:
            raise denied(
                "bypass_role_not_allowed",
                f'service "{service.name}" may not use role "{_shown(role)}"',
                service.name,
            )
        if label is None:
            raise denied(
                "bypass_no_label",
                f'service "{service.name}" must connect with a label (rlsproxy.label), e.g. job:nightly-sync',
                service.name,
            )
        if not any(fnmatchcase(label, pattern) for pattern in service.labels):
            raise denied(
                "bypass_label_not_allowed",
                f'label "{_shown(label)}" is not allowed for service "{service.name}"',
                service.name,
            )
        return identity(service.name)

    def _role(self, claims: dict[str, Any]) -> str:
        value = claim_at(claims, self._role_claim)
        if value is _MISSING or value is None:
            if self._roles.default is None:
                raise AuthError("role_missing", f'token has no role claim "{self._role_claim}"', code=_CODE)
            return self._roles.default
        if not isinstance(value, str) or not value:
            message = f'token role claim "{self._role_claim}" must be a non-empty string'
            raise AuthError("role_invalid", message, code=_CODE)
        return value

    @staticmethod
    def _matches(service: ServiceConfig, claims: dict[str, Any]) -> bool:
        for claim, expected in service.match:
            value = claim_at(claims, claim)
            if not isinstance(value, str) or value != expected:
                return False
        return True
