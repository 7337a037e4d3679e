"""The key set of jwt.jwks_url inside the KeyStore (sans-IO): loading, kid selection, misses."""

from __future__ import annotations

import json
from typing import Any

import jwt as pyjwt
import pytest

from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore, RemoteKeys
from rlsproxy.config import JwtConfig
from rlsproxy.errors import AuthError
from tests.unit.auth.helpers import NOW, SECRET, Clock, Pair

URL = "https://issuer.example/jwks.json"


def jwks(*members: dict[str, Any]) -> str:
    return json.dumps({"keys": list(members)})


def es256(pair: Pair, kid: str | None) -> str:
    payload = {"sub": "u1", "exp": int(NOW) + 3600}
    return pyjwt.encode(payload, pair.private_pem, "ES256", headers={"kid": kid} if kid else None)


def setup(clock: Clock, **cfg: Any) -> tuple[TokenVerifier, RemoteKeys, list[str]]:
    remote = RemoteKeys(URL)
    misses: list[str] = []
    remote.on_miss = lambda: misses.append("miss")
    config = JwtConfig(algorithms=("ES256", "HS256"), jwks_url=URL, **cfg)
    return TokenVerifier(config, KeyStore.from_config(config, remote=remote), clock=clock), remote, misses


def failure(v: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(token)
    assert info.value.sqlstate == "28000"
    return info.value


def test_not_loaded_yet(ec_pair: Pair, clock: Clock) -> None:
    v, _, misses = setup(clock)
    assert v.keys.wants_refresh(es256(ec_pair, "k1"))
    err = failure(v, es256(ec_pair, "k1"))
    assert (err.reason, err.message) == (
        "jwks_not_loaded",
        "JWKS not loaded yet: the keys at jwt.jwks_url have not been fetched; try again shortly",
    )
    assert failure(v, es256(ec_pair, None)).reason == "jwks_not_loaded"
    assert misses == ["miss", "miss"]


def test_other_key_sources_work_before_the_first_fetch(clock: Clock) -> None:
    v, _, misses = setup(clock, secret=SECRET)
    token = pyjwt.encode({"sub": "u1", "exp": int(NOW) + 60}, SECRET, "HS256")
    assert v.verify(token)["sub"] == "u1"
    assert misses == []


def test_loaded_keys_verify_by_kid(ec_pair: Pair, clock: Clock) -> None:
    v, remote, misses = setup(clock)
    assert remote.load(jwks({**ec_pair.public_jwk, "kid": "k1"})) is False
    assert len(v.keys) == 1
    assert not v.keys.wants_refresh(es256(ec_pair, "k1"))
    assert v.verify(es256(ec_pair, "k1"))["sub"] == "u1"
    assert misses == []


def test_unknown_kid_is_a_miss(ec_pair: Pair, clock: Clock) -> None:
    v, remote, misses = setup(clock)
    remote.load(jwks({**ec_pair.public_jwk, "kid": "k1"}))
    assert v.keys.wants_refresh(es256(ec_pair, "k2"))
    assert not v.keys.wants_refresh("not a jwt")
    err = failure(v, es256(ec_pair, "k2"))
    assert (err.reason, err.message) == ("unknown_kid", 'signing key "k2" is not known')
    assert misses == ["miss"]


def test_rotation_and_withdrawal(ec_pair: Pair, ec_pair2: Pair, clock: Clock) -> None:
    v, remote, _ = setup(clock)
    remote.load(jwks({**ec_pair.public_jwk, "kid": "old"}))
    # the new key is added: both verify; nothing was withdrawn
    assert (
        remote.load(jwks({**ec_pair.public_jwk, "kid": "old"}, {**ec_pair2.public_jwk, "kid": "new"}))
        is False
    )
    assert v.verify(es256(ec_pair2, "new"))["sub"] == "u1"
    assert v.verify(es256(ec_pair, "old"))["sub"] == "u1"
    # the old one is withdrawn
    assert remote.load(jwks({**ec_pair2.public_jwk, "kid": "new"})) is True
    v.clear_cache()
    assert failure(v, es256(ec_pair, "old")).reason == "unknown_kid"


def test_a_bad_document_keeps_the_last_good_set(ec_pair: Pair, clock: Clock) -> None:
    v, remote, _ = setup(clock)
    remote.load(jwks({**ec_pair.public_jwk, "kid": "k1"}))
    for bad in ("{not json", '{"keys": []}', "[]"):
        with pytest.raises(ValueError):
            remote.load(bad)
    assert v.verify(es256(ec_pair, "k1"))["sub"] == "u1"
