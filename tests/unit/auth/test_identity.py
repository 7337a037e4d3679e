"""From verified claims to an Identity: role mapping, anonymous access, and service (bypass) rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rlsproxy.auth.identity import Authenticator, BypassDenied, Identity
from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore
from rlsproxy.auth.mint import mint_token
from rlsproxy.config import JwtConfig, RolesConfig, ServiceConfig
from rlsproxy.errors import AuthError
from tests.unit.auth.helpers import NOW, SECRET, Clock

SYNC = ServiceConfig(
    name="sync",
    match=(("sub", "svc-sync"), ("app_metadata.kind", "service")),
    roles=("service_role",),
    labels=("job:*", "migration:2024-*"),
)


def make(
    clock: Clock,
    *,
    roles: RolesConfig | None = None,
    services: tuple[ServiceConfig, ...] = (SYNC,),
    **jwt_kw: Any,
) -> Authenticator:
    cfg = JwtConfig(secret=SECRET, **jwt_kw)
    verifier = TokenVerifier(cfg, KeyStore.from_config(cfg), clock=clock)
    return Authenticator(cfg, roles or RolesConfig(), services, verifier)


def tok(**claims: Any) -> str:
    role = claims.pop("role", "authenticated")
    sub = claims.pop("sub", "u1")
    return mint_token(SECRET, sub=sub, role=role, ttl_s=3600, now=NOW, extra=claims)


def service_tok(role: str = "service_role", **claims: Any) -> str:
    return tok(sub="svc-sync", role=role, app_metadata={"kind": "service"}, **claims)


def denied(auth: Authenticator, token: str | None, label: str | None = None) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(token, label=label)
    assert info.value.sqlstate == "28000" and info.value.fatal
    if token:
        assert token not in info.value.message
    return info.value


def test_user_identity(clock: Clock) -> None:
    t = tok(email="a@example.com")
    ident = make(clock).authenticate(t)
    assert ident == Identity(
        role="authenticated",
        claims_json=json.dumps(
            {
                "iat": int(NOW),
                "exp": int(NOW) + 3600,
                "sub": "u1",
                "role": "authenticated",
                "email": "a@example.com",
            },
            separators=(",", ":"),
        ),
        subject="u1",
        anonymous=False,
        expires_at=NOW + 3600,
    )
    assert ident.service is None and ident.label is None


def test_claims_json_keeps_unicode_and_order(clock: Clock) -> None:
    ident = make(clock).authenticate(tok(name="Zoë"))
    assert '"name":"Zoë"' in ident.claims_json
    assert ident.claims_json.startswith('{"iat":')
    assert " " not in ident.claims_json


def test_role_claim_dotted_path(clock: Clock) -> None:
    auth = make(
        clock, role_claim="app_metadata.role", roles=RolesConfig(allowed=("anon", "authenticated", "editor"))
    )
    assert auth.authenticate(tok(role=None, app_metadata={"role": "editor"})).role == "editor"
    # Missing at the path: the default role.
    assert auth.authenticate(tok(role="editor")).role == "authenticated"
    assert auth.authenticate(tok(role=None, app_metadata="flat")).role == "authenticated"


def test_namespaced_claim_key_with_dots(clock: Clock) -> None:
    auth = make(clock, role_claim="https://example.com/role")
    assert auth.authenticate(tok(role=None, **{"https://example.com/role": "anon"})).role == "anon"


def test_default_role_none(clock: Clock) -> None:
    auth = make(clock, roles=RolesConfig(default=None))
    assert denied(auth, tok(role=None)).reason == "role_missing"


@pytest.mark.parametrize("bad", [5, ["authenticated"], {"x": 1}, "", True])
def test_role_invalid(clock: Clock, bad: Any) -> None:
    assert denied(make(clock), tok(role=bad)).reason == "role_invalid"


def test_role_not_allowed(clock: Clock) -> None:
    err = denied(make(clock), tok(role="postgres"))
    assert err.reason == "role_not_allowed"
    assert err.message == 'role "postgres" is not allowed'
    assert isinstance(err, BypassDenied)
    assert (err.service, err.requested_role, err.subject, err.label) == (None, "postgres", "u1", None)


def test_anonymous(clock: Clock) -> None:
    ident = make(clock).authenticate(None)
    assert ident == Identity(
        role="anon", claims_json='{"role":"anon"}', subject=None, anonymous=True, expires_at=None
    )
    err = denied(make(clock, roles=RolesConfig(anonymous=None)), None)
    assert err.reason == "no_token"
    assert err.message == "a token is required: pass rlsproxy.jwt or use it as the password"


def test_service_bypass_ok(clock: Clock) -> None:
    ident = make(clock).authenticate(service_tok(), label="job:nightly-sync")
    assert (ident.role, ident.service, ident.label, ident.subject) == (
        "service_role",
        "sync",
        "job:nightly-sync",
        "svc-sync",
    )
    assert not ident.anonymous


def test_service_label_missing(clock: Clock) -> None:
    err = denied(make(clock), service_tok())
    assert err.reason == "bypass_no_label"
    assert err.message == ('service "sync" must connect with a label (rlsproxy.label), e.g. job:nightly-sync')
    assert isinstance(err, BypassDenied)
    assert (err.service, err.requested_role, err.label, err.subject) == (
        "sync",
        "service_role",
        None,
        "svc-sync",
    )


@pytest.mark.parametrize("label", ["adhoc", "JOB:x", "migration:2023-01", "xjob:1"])
def test_service_label_wrong(clock: Clock, label: str) -> None:
    err = denied(make(clock), service_tok(), label)
    assert err.reason == "bypass_label_not_allowed"
    assert isinstance(err, BypassDenied) and err.label == label and err.service == "sync"


def test_service_label_globs(clock: Clock) -> None:
    auth = make(clock)
    assert auth.authenticate(service_tok(), label="migration:2024-06").service == "sync"


def test_service_role_not_in_service_roles(clock: Clock) -> None:
    err = denied(make(clock), service_tok(role="postgres"), "job:x")
    assert err.reason == "bypass_role_not_allowed"
    assert isinstance(err, BypassDenied) and err.requested_role == "postgres" and err.service == "sync"
    # A label on an allowed role from a service token still asks for bypass: refused.
    assert denied(make(clock), service_tok(role="authenticated"), "job:x").reason == "bypass_role_not_allowed"


def test_service_token_with_allowed_role_and_no_label_is_a_user(clock: Clock) -> None:
    ident = make(clock).authenticate(service_tok(role="authenticated"))
    assert ident.role == "authenticated" and ident.service is None


def test_stolen_service_role_token_matches_no_service(clock: Clock) -> None:
    # Right role, but the claims that identify the service are missing or differ.
    for t in (
        tok(role="service_role"),
        tok(sub="svc-sync", role="service_role"),
        tok(sub="svc-sync", role="service_role", app_metadata={"kind": "user"}),
    ):
        err = denied(make(clock), t)
        assert err.reason == "role_not_allowed"
        assert isinstance(err, BypassDenied) and err.requested_role == "service_role"


def test_label_without_service_refused(clock: Clock) -> None:
    err = denied(make(clock), tok(), "job:x")
    assert err.reason == "bypass_not_a_service"
    assert isinstance(err, BypassDenied) and err.service is None and err.label == "job:x"


def test_match_value_must_be_a_string(clock: Clock) -> None:
    svc = ServiceConfig(name="n", match=(("tier", "1"),), roles=("service_role",), labels=("*",))
    auth = make(clock, services=(svc,))
    assert denied(auth, tok(role="service_role", tier=1), "x").reason == "bypass_not_a_service"
    assert auth.authenticate(tok(role="service_role", tier="1"), label="x").service == "n"


def test_service_with_empty_match_never_matches(clock: Clock) -> None:
    svc = ServiceConfig(name="all", match=(), roles=("service_role",), labels=("*",))
    assert (
        denied(make(clock, services=(svc,)), tok(role="service_role"), "x").reason == "bypass_not_a_service"
    )


def test_first_service_granting_role_wins(clock: Clock) -> None:
    a = ServiceConfig(name="a", match=(("sub", "svc"),), roles=("reporting",), labels=("*",))
    b = ServiceConfig(name="b", match=(("sub", "svc"),), roles=("service_role",), labels=("job:*",))
    ident = make(clock, services=(a, b)).authenticate(tok(sub="svc", role="service_role"), label="job:1")
    assert ident.service == "b"


def test_identity_cache(clock: Clock) -> None:
    auth = make(clock)
    verifier = auth._verifier
    t = service_tok()
    first = auth.authenticate(t, label="job:a")
    assert auth.authenticate(t, label="job:a") is first
    assert verifier.cache_misses == 1 and verifier.cache_hits == 0  # served from the identity cache
    other = auth.authenticate(t, label="job:b")  # a different label is a different identity
    assert other.label == "job:b" and verifier.cache_hits == 1
    assert denied(auth, t).reason == "bypass_no_label"
    clock.now = NOW + 3600 + 30
    assert denied(auth, t, "job:a").reason == "expired"
