"""jwt.require_sub: a token without a subject is refused, except for the anonymous role and services."""

from __future__ import annotations

from typing import Any

import pytest

from rlsproxy.auth.identity import Authenticator
from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore
from rlsproxy.auth.mint import mint_token
from rlsproxy.config import ConfigError, JwtConfig, RolesConfig, ServiceConfig, describe, parse_config
from rlsproxy.errors import AuthError
from tests.unit.auth.helpers import NOW, SECRET, Clock

SYNC = ServiceConfig(
    name="sync", match=(("client_id", "sync-job"),), roles=("service_role",), labels=("job:*",)
)


def make(clock: Clock, *, roles: RolesConfig | None = None, **jwt_kw: Any) -> Authenticator:
    cfg = JwtConfig(secret=SECRET, **jwt_kw)
    verifier = TokenVerifier(cfg, KeyStore.from_config(cfg), clock=clock)
    return Authenticator(cfg, roles or RolesConfig(), (SYNC,), verifier)


def tok(sub: Any = None, role: str | None = "authenticated", **claims: Any) -> str:
    if sub is not None and not isinstance(sub, str):
        claims["sub"] = sub  # mint_token takes only a string
        sub = None
    return mint_token(SECRET, sub=sub, role=role, ttl_s=3600, now=NOW, extra=claims)


def refused(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(token)
    assert info.value.sqlstate == "28000" and info.value.fatal
    return info.value


@pytest.mark.parametrize("sub", [None, ""])
def test_token_without_subject_refused(clock: Clock, sub: Any) -> None:
    err = refused(make(clock), tok(sub))
    assert err.reason == "missing_claim"
    assert err.message.startswith("token has no subject (sub)")
    assert 'role "authenticated"' in err.message and "jwt.require_sub" in err.message


@pytest.mark.parametrize("sub", [42, ["u1"]])
def test_subject_that_is_not_a_string_refused(clock: Clock, sub: Any) -> None:
    assert refused(make(clock), tok(sub)).reason == "malformed"  # pyjwt: sub must be a string
    assert refused(make(clock, require_sub=False), tok(sub)).reason == "malformed"


def test_default_role_without_subject_refused(clock: Clock) -> None:
    """A token naming no role gets roles.default, which is not the anonymous role."""
    assert refused(make(clock), tok(role=None)).reason == "missing_claim"


def test_anonymous_role_needs_no_subject(clock: Clock) -> None:
    ident = make(clock).authenticate(tok(role="anon"))
    assert (ident.role, ident.subject, ident.anonymous) == ("anon", None, False)
    # No token at all: the anonymous identity, as before.
    assert make(clock).authenticate(None).role == "anon"


def test_anonymous_exemption_follows_roles_anonymous(clock: Clock) -> None:
    roles = RolesConfig(allowed=("anon", "authenticated", "guest"), anonymous="guest")
    auth = make(clock, roles=roles)
    assert auth.authenticate(tok(role="guest")).role == "guest"
    assert refused(auth, tok(role="anon")).reason == "missing_claim"
    no_anonymous = make(clock, roles=RolesConfig(anonymous=None))
    assert refused(no_anonymous, tok(role="anon")).reason == "missing_claim"


def test_service_identity_needs_no_subject(clock: Clock) -> None:
    """Services are matched by their own claims and connect with a label the audit log records."""
    ident = make(clock).authenticate(tok(role="service_role", client_id="sync-job"), label="job:1")
    assert (ident.service, ident.label, ident.subject) == ("sync", "job:1", None)


def test_require_sub_off(clock: Clock) -> None:
    auth = make(clock, require_sub=False)
    ident = auth.authenticate(tok())
    assert (ident.role, ident.subject) == ("authenticated", None)
    assert auth.authenticate(tok("")).subject == ""


def test_token_with_subject_accepted(clock: Clock) -> None:
    assert make(clock).authenticate(tok("u1")).subject == "u1"


def test_config_key() -> None:
    base: dict[str, Any] = {"jwt": {"secret": "s" * 32}}
    assert parse_config(base, {}).jwt.require_sub is True
    off = parse_config({"jwt": {"secret": "s" * 32, "require_sub": False}}, {})
    assert off.jwt.require_sub is False
    assert "sub optional" in describe(off) and "sub required" in describe(parse_config(base, {}))
    with pytest.raises(ConfigError) as info:
        parse_config({"jwt": {"secret": "s" * 32, "require_sub": "maybe"}}, {})
    assert info.value.problems[0].startswith("jwt.require_sub: ")
