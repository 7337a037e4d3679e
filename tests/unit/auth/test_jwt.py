"""Token verification: every algorithm family, every way a token can be wrong, the cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore
from rlsproxy.auth.mint import mint_token
from rlsproxy.config import ConfigError, JwtConfig
from rlsproxy.errors import AuthError
from tests.unit.auth.helpers import NOW, SECRET, Clock, Pair, write


def verifier(cfg: JwtConfig, clock: Clock, base: Path | None = None, **kw: Any) -> TokenVerifier:
    return TokenVerifier(cfg, KeyStore.from_config(cfg, base), clock=clock, **kw)


def hs(clock: Clock, **kw: Any) -> TokenVerifier:
    return verifier(JwtConfig(secret=SECRET, **kw), clock)


def token(key: str = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": "u1", "role": "authenticated", "iat": int(NOW), "exp": int(NOW) + 3600}
    payload.update(claims)
    for name in [k for k, v in payload.items() if v is None]:
        del payload[name]
    return pyjwt.encode(payload, key, algorithm=alg, headers=headers)


def reason_of(v: TokenVerifier, tok: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(tok)
    err = info.value
    assert err.sqlstate == "28000"
    assert err.fatal
    # Nothing of the token, not even a segment, ever reaches the message.
    for part in tok.split("."):
        if len(part) > 8:
            assert part not in err.message
    if tok:
        assert tok not in str(err)
    return err


def test_hs256_verifies(clock: Clock) -> None:
    claims = hs(clock).verify(token())
    assert claims["sub"] == "u1" and claims["role"] == "authenticated"


@pytest.mark.parametrize(
    ("alg", "pair_name"),
    [("RS256", "rsa_pair"), ("PS256", "rsa_pair"), ("ES256", "ec_pair"), ("EdDSA", "ed_pair")],
)
def test_public_key_algorithms_verify(
    alg: str, pair_name: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> None:
    pair: Pair = request.getfixturevalue(pair_name)
    pem = write(tmp_path, "key.pem", pair.public_pem)
    v = verifier(JwtConfig(algorithms=(alg,), public_keys=(pem,)), clock)
    assert v.verify(token(pair.private_pem, alg))["sub"] == "u1"


@pytest.mark.parametrize(
    ("alg", "pair_name"), [("RS256", "rsa_pair"), ("ES256", "ec_pair"), ("EdDSA", "ed_pair")]
)
def test_jwks_keys_verify_by_kid(
    alg: str, pair_name: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> None:
    pair: Pair = request.getfixturevalue(pair_name)
    jwks = write(tmp_path, "jwks.json", json.dumps({"keys": [{**pair.public_jwk, "kid": "k1"}]}))
    v = verifier(JwtConfig(algorithms=(alg,), jwks_file=jwks), clock)
    assert v.verify(token(pair.private_pem, alg, headers={"kid": "k1"}))["sub"] == "u1"


def test_certificate_accepted(rsa_pair: Pair, tmp_path: Path, clock: Clock) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    private = serialization.load_pem_private_key(rsa_pair.private_pem.encode(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = write(tmp_path, "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    v = verifier(JwtConfig(algorithms=("RS256",), public_keys=(pem,)), clock)
    assert v.verify(token(rsa_pair.private_pem, "RS256"))["sub"] == "u1"


def test_relative_paths_resolve_against_base_dir(rsa_pair: Pair, tmp_path: Path, clock: Clock) -> None:
    write(tmp_path, "key.pem", rsa_pair.public_pem)
    v = verifier(JwtConfig(algorithms=("RS256",), public_keys=("key.pem",)), clock, base=tmp_path)
    assert v.verify(token(rsa_pair.private_pem, "RS256"))["sub"] == "u1"


def test_key_loading_problems_reported_together(rsa_pair: Pair, tmp_path: Path) -> None:
    private = write(tmp_path, "private.pem", rsa_pair.private_pem)
    garbage = write(tmp_path, "jwks.json", "{not json")
    cfg = JwtConfig(
        algorithms=("RS256",), public_keys=(private, str(tmp_path / "missing.pem")), jwks_file=garbage
    )
    with pytest.raises(ConfigError) as info:
        KeyStore.from_config(cfg)
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("jwt.public_keys[0]:") and "private key" in problems[0]
    assert problems[1].startswith("jwt.public_keys[1]:")
    assert problems[2].startswith("jwt.jwks_file:")
    assert "BEGIN" not in str(info.value)


def test_alg_none_rejected(clock: Clock) -> None:
    unsigned = pyjwt.encode({"sub": "u1", "role": "service_role", "exp": int(NOW) + 60}, "", algorithm="none")
    assert reason_of(hs(clock), unsigned).reason == "algorithm"
    # Even when a configuration lists it.
    v = verifier(JwtConfig(secret=SECRET, algorithms=("HS256", "none")), clock)
    assert reason_of(v, unsigned).reason == "algorithm"


def test_alg_outside_allowlist_rejected(clock: Clock) -> None:
    err = reason_of(hs(clock), token(key=SECRET * 2, alg="HS512"))
    assert err.reason == "algorithm"
    assert '"HS512" is not allowed' in err.message


def test_algorithm_confusion_hs_with_rsa_public_key(rsa_pair: Pair, tmp_path: Path, clock: Clock) -> None:
    """An HS256 token 'signed' with the RSA public key as HMAC secret must not verify."""
    pem = write(tmp_path, "key.pem", rsa_pair.public_pem)
    forged = pyjwt.api_jws.PyJWS()
    forged_alg = pyjwt.algorithms.HMACAlgorithm(pyjwt.algorithms.HMACAlgorithm.SHA256)
    forged_alg.prepare_key = lambda key: key  # type: ignore[method-assign,assignment,return-value]  # pyjwt refuses PEM secrets itself
    forged.unregister_algorithm("HS256")
    forged.register_algorithm("HS256", forged_alg)
    payload = json.dumps({"sub": "u1", "role": "service_role", "exp": int(NOW) + 60}).encode()
    tok = forged.encode(payload, rsa_pair.public_pem, algorithm="HS256")
    # The allowlist alone stops it...
    assert (
        reason_of(verifier(JwtConfig(algorithms=("RS256",), public_keys=(pem,)), clock), tok).reason
        == "algorithm"
    )
    # ...and with HS256 allowed too, an HS token is never checked against a public key.
    both = verifier(JwtConfig(algorithms=("RS256", "HS256"), public_keys=(pem,)), clock)
    assert reason_of(both, tok).reason == "algorithm"
    # With a secret configured as well, it is checked against the secret only: a bad signature.
    withsecret = verifier(JwtConfig(algorithms=("RS256", "HS256"), secret=SECRET, public_keys=(pem,)), clock)
    assert reason_of(withsecret, tok).reason == "bad_signature"


def test_jwks_kid_with_wrong_family_rejected(rsa_pair: Pair, tmp_path: Path, clock: Clock) -> None:
    jwks = write(tmp_path, "jwks.json", json.dumps({"keys": [{**rsa_pair.public_jwk, "kid": "k1"}]}))
    v = verifier(JwtConfig(algorithms=("RS256", "ES256"), jwks_file=jwks), clock)
    err = reason_of(v, token(SECRET, "HS256", headers={"kid": "k1"}))  # HS256 not allowed at all
    assert err.reason == "algorithm"
    v2 = verifier(JwtConfig(algorithms=("RS256", "HS256"), jwks_file=jwks), clock)
    err = reason_of(v2, token(SECRET, "HS256", headers={"kid": "k1"}))
    assert err.reason == "algorithm" and 'signing key "k1"' in err.message


def test_jwk_alg_restricts(rsa_pair: Pair, tmp_path: Path, clock: Clock) -> None:
    jwks = write(
        tmp_path, "jwks.json", json.dumps({"keys": [{**rsa_pair.public_jwk, "kid": "k1", "alg": "RS256"}]})
    )
    v = verifier(JwtConfig(algorithms=("RS256", "PS256"), jwks_file=jwks), clock)
    assert v.verify(token(rsa_pair.private_pem, "RS256", headers={"kid": "k1"}))
    assert reason_of(v, token(rsa_pair.private_pem, "PS256", headers={"kid": "k1"})).reason == "algorithm"


@pytest.mark.parametrize(("offset", "ok"), [(-29.5, True), (-29, True), (-30, False), (-31, False)])
def test_expiry_leeway_boundary(clock: Clock, offset: float, ok: bool) -> None:
    # exp is NOW + offset; leeway 30: valid while now < exp + leeway.
    exp = NOW + offset
    tok = token(exp=exp)
    v = hs(clock)
    if ok:
        assert v.verify(tok)["exp"] == exp
    else:
        err = reason_of(v, tok)
        assert err.reason == "expired"
        assert err.message.startswith("token expired at 2023-11-14T22:1")


def test_expiry_exact_boundary_is_expired(clock: Clock) -> None:
    clock.now = NOW + 30  # exp == now - leeway
    assert reason_of(hs(clock), token(exp=int(NOW))).reason == "expired"
    clock.now = NOW + 29.999
    assert hs(clock).verify(token(exp=int(NOW)))


def test_nbf_in_future(clock: Clock) -> None:
    assert reason_of(hs(clock), token(nbf=int(NOW) + 31)).reason == "not_yet_valid"
    assert hs(clock).verify(token(nbf=int(NOW) + 30))


def test_iat_in_future(clock: Clock) -> None:
    assert reason_of(hs(clock), token(iat=int(NOW) + 3600)).reason == "not_yet_valid"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "tomorrow", True, None])
def test_non_numeric_exp_is_malformed(clock: Clock, bad: Any) -> None:
    tok = pyjwt.encode({"sub": "u1", "exp": bad}, SECRET, algorithm="HS256")
    err = reason_of(hs(clock), tok)
    expected = "missing_claim" if bad is None else "malformed"
    assert err.reason == expected


def test_audience(clock: Clock) -> None:
    v = hs(clock, audience=("authenticated", "api"))
    assert v.verify(token(aud="api"))
    assert v.verify(token(aud=["x", "authenticated"]))
    assert reason_of(v, token(aud="other")).reason == "audience"
    err = reason_of(v, token())
    assert err.reason == "missing_claim" and '"aud"' in err.message
    # Not configured: aud is not checked (Supabase tokens carry one).
    assert hs(clock).verify(token(aud="anything"))


def test_issuer(clock: Clock) -> None:
    v = hs(clock, issuer="https://auth.example")
    assert v.verify(token(iss="https://auth.example"))
    err = reason_of(v, token(iss="https://evil.example"))
    assert err.reason == "issuer"


def test_missing_exp(clock: Clock) -> None:
    err = reason_of(hs(clock), token(exp=None))
    assert err.reason == "missing_claim"
    assert err.message == 'token is missing the required claim "exp"'
    # When exp is not required, a token without one verifies.
    assert hs(clock, required_claims=()).verify(token(exp=None))


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "a.b", "eyJhbGciOiJIUzI1NiJ9.!!!.x", "....."])
def test_garbage(clock: Clock, garbage: str) -> None:
    err = reason_of(hs(clock), garbage)
    assert err.reason == "malformed"
    assert err.message == "token is not a well-formed JWT"


def test_bad_signature(clock: Clock) -> None:
    tok = token(key="another-secret-that-is-at-least-32-bytes!!")
    err = reason_of(hs(clock), tok)
    assert err.reason == "bad_signature"
    assert err.message == "token signature does not verify"
    # A tampered payload, same signature.
    good = token()
    head, _, sig = good.split(".")
    forged_payload = pyjwt.utils.base64url_encode(json.dumps({"sub": "u1", "role": "service_role"}).encode())
    assert reason_of(hs(clock), f"{head}.{forged_payload.decode()}.{sig}").reason == "bad_signature"


def test_unknown_kid(rsa_pair: Pair, rsa_pair2: Pair, tmp_path: Path, clock: Clock) -> None:
    jwks = write(tmp_path, "jwks.json", json.dumps({"keys": [{**rsa_pair.public_jwk, "kid": "k1"}]}))
    v = verifier(JwtConfig(algorithms=("RS256",), jwks_file=jwks), clock)
    err = reason_of(v, token(rsa_pair2.private_pem, "RS256", headers={"kid": "k9"}))
    assert err.reason == "unknown_kid"
    assert err.message == 'signing key "k9" is not known'


def test_kid_rotation(rsa_pair: Pair, rsa_pair2: Pair, tmp_path: Path, clock: Clock) -> None:
    jwks = write(
        tmp_path,
        "jwks.json",
        json.dumps({"keys": [{**rsa_pair.public_jwk, "kid": "old"}, {**rsa_pair2.public_jwk, "kid": "new"}]}),
    )
    v = verifier(JwtConfig(algorithms=("RS256",), jwks_file=jwks), clock)
    assert v.verify(token(rsa_pair.private_pem, "RS256", headers={"kid": "old"}, sub="a"))["sub"] == "a"
    assert v.verify(token(rsa_pair2.private_pem, "RS256", headers={"kid": "new"}, sub="b"))["sub"] == "b"
    # The right key under the wrong kid does not verify.
    err = reason_of(v, token(rsa_pair.private_pem, "RS256", headers={"kid": "new"}, sub="c"))
    assert err.reason == "bad_signature"
    # Without a kid, each candidate is tried.
    assert v.verify(token(rsa_pair2.private_pem, "RS256", sub="d"))["sub"] == "d"


def test_several_pem_keys_without_kid(rsa_pair: Pair, rsa_pair2: Pair, tmp_path: Path, clock: Clock) -> None:
    pems = (write(tmp_path, "a.pem", rsa_pair.public_pem), write(tmp_path, "b.pem", rsa_pair2.public_pem))
    v = verifier(JwtConfig(algorithms=("RS256",), public_keys=pems), clock)
    assert v.verify(token(rsa_pair2.private_pem, "RS256"))
    assert v.verify(token(rsa_pair.private_pem, "RS256"))


def test_hs_token_with_unknown_kid_falls_back_to_secret(clock: Clock) -> None:
    assert hs(clock).verify(token(headers={"kid": "supabase-legacy"}))


def test_cache_hits(clock: Clock) -> None:
    v = hs(clock)
    tok = token()
    first = v.verify(tok)
    assert (v.cache_hits, v.cache_misses) == (0, 1)
    assert v.verify(tok) is first
    assert v.verify(tok) is first
    assert (v.cache_hits, v.cache_misses) == (2, 1)
    v.verify(token(sub="other"))
    assert (v.cache_hits, v.cache_misses) == (2, 2)


def test_failures_are_not_cached(clock: Clock) -> None:
    v = hs(clock)
    tok = token(key="another-secret-that-is-at-least-32-bytes!!")
    for _ in range(2):
        assert reason_of(v, tok).reason == "bad_signature"
    assert (v.cache_hits, v.cache_misses) == (0, 2)


def test_cached_entry_expires(clock: Clock) -> None:
    v = hs(clock)
    tok = token(exp=int(NOW) + 60)
    v.verify(tok)
    clock.now = NOW + 89
    v.verify(tok)
    assert v.cache_hits == 1
    clock.now = NOW + 90  # exp + leeway
    assert reason_of(v, tok).reason == "expired"
    assert v.cache_misses == 2


def test_cache_bounded_evicts_oldest(clock: Clock) -> None:
    v = hs(clock, cache_size=2)
    a, b, c = (token(sub=s) for s in "abc")
    for t in (a, b, c):
        v.verify(t)
    v.verify(c)
    v.verify(b)
    assert v.cache_hits == 2
    v.verify(a)  # evicted
    assert v.cache_misses == 4


def test_cache_size_override_and_disabled(clock: Clock) -> None:
    v = verifier(JwtConfig(secret=SECRET), clock, cache_size=0)
    tok = token()
    v.verify(tok)
    v.verify(tok)
    assert (v.cache_hits, v.cache_misses) == (0, 2)


def test_mint_token_roundtrip(clock: Clock, ec_pair: Pair, tmp_path: Path) -> None:
    tok = mint_token(
        SECRET, sub="u9", role="anon", ttl_s=60, now=NOW, extra={"app_metadata": {"tier": "gold"}}
    )
    claims = hs(clock).verify(tok)
    assert claims == {
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "sub": "u9",
        "role": "anon",
        "app_metadata": {"tier": "gold"},
    }
    assert "sub" not in hs(clock).verify(mint_token(SECRET, sub=None, role=None, now=NOW))
    pem = write(tmp_path, "ec.pem", ec_pair.public_pem)
    v = verifier(JwtConfig(algorithms=("ES256",), public_keys=(pem,)), clock)
    assert v.verify(mint_token(ec_pair.private_pem, sub="e", role=None, algorithm="ES256", now=NOW, kid="x"))
    with pytest.raises(ValueError):
        mint_token(SECRET, sub=None, role="", algorithm="none")


def test_none_in_config_algorithms_dropped(clock: Clock) -> None:
    cfg = replace(JwtConfig(secret=SECRET), algorithms=("none",))
    v = verifier(cfg, clock)
    assert reason_of(v, token()).reason == "algorithm"
