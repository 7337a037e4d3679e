"""Key material for verifying tokens: an HS secret, PEM public keys or certificates, and a JWKS file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from rlsproxy.config import ConfigError, JwtConfig
from rlsproxy.errors import AuthError
from rlsproxy.wire import sqlstate

# The curve each ES algorithm is defined over; a key on another curve can never verify it.
_EC_CURVES = {
    "ES256": "secp256r1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
    "ES521": "secp521r1",
    "ES256K": "secp256k1",
}
_MAX_KID_IN_MESSAGE = 64


def family(alg: str) -> str | None:
    """The key family an algorithm needs: "HS", "RSA", "EC", "OKP", or None when unknown."""
    if alg.startswith("HS"):
        return "HS"
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    return None


@dataclass(frozen=True)
class Key:
    """One verification key; `key` is what pyjwt takes: bytes for HS, else a cryptography public key."""

    family: str
    key: Any
    kid: str | None = None
    alg: str | None = None  # a JWK's own "alg": when present, the only algorithm it may verify
    curve: str | None = None
    source: str = ""

    def fits(self, alg: str) -> bool:
        if family(alg) != self.family or (self.alg is not None and self.alg != alg):
            return False
        return self.family != "EC" or _EC_CURVES.get(alg) == self.curve


def _public_key_entry(obj: Any, source: str, kid: str | None = None, alg: str | None = None) -> Key:
    if isinstance(obj, rsa.RSAPublicKey):
        return Key("RSA", obj, kid, alg, None, source)
    if isinstance(obj, ec.EllipticCurvePublicKey):
        return Key("EC", obj, kid, alg, obj.curve.name, source)
    if isinstance(obj, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return Key("OKP", obj, kid, alg, None, source)
    raise ValueError(f"unsupported key type {type(obj).__name__}")


def load_pem(data: bytes, source: str) -> Key:
    """A PEM public key or certificate; raises ValueError with a reason (never key bytes)."""
    if b"PRIVATE KEY-----" in data:
        raise ValueError("contains a private key; give the public key (or a certificate) instead")
    if b"-----BEGIN CERTIFICATE-----" in data:
        return _public_key_entry(x509.load_pem_x509_certificate(data).public_key(), source)
    return _public_key_entry(load_pem_public_key(data), source)


def load_jwks(text: str, source: str) -> list[Key]:
    """The usable keys of a JWKS document; members pyjwt cannot use (other kty, "enc" keys) are skipped."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    members = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(members, list):
        raise ValueError('not a JWKS document (expected {"keys": [...]})')
    keys: list[Key] = []
    for member in members:
        if not isinstance(member, dict) or member.get("use", "sig") != "sig":
            continue
        try:
            jwk = PyJWK(member)
        except PyJWTError:
            continue
        # Only a stated "alg" restricts the key; without one pyjwt merely guessed it from kty.
        raw_alg = member.get("alg")
        alg = raw_alg if isinstance(raw_alg, str) else None
        kid = jwk.key_id if isinstance(jwk.key_id, str) else None
        if jwk.key_type == "oct":
            keys.append(Key("HS", jwk.key, kid, alg, None, source))
        else:
            keys.append(_public_key_entry(jwk.key, source, kid, alg))
    if not keys:
        raise ValueError("the JWKS document has no usable signing keys")
    return keys


def _shown(kid: str) -> str:
    return kid if len(kid) <= _MAX_KID_IN_MESSAGE else kid[:_MAX_KID_IN_MESSAGE] + "..."


class KeyStore:
    """All configured verification keys, loaded once; a reload builds a new KeyStore."""

    def __init__(self, secret: str | bytes | None = None, keys: tuple[Key, ...] = ()) -> None:
        self._secret: Key | None = None
        if secret:
            raw = secret.encode() if isinstance(secret, str) else secret
            self._secret = Key("HS", raw, source="jwt.secret")
        self._by_kid: dict[str, Key] = {k.kid: k for k in keys if k.kid is not None}
        self._keys: tuple[Key, ...] = tuple(keys)

    @classmethod
    def from_config(cls, cfg: JwtConfig, base_dir: str | Path | None = None) -> KeyStore:
        """Load the files `cfg` names (relative to base_dir); every unreadable one is reported together."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        problems: list[str] = []
        keys: list[Key] = []
        for i, name in enumerate(cfg.public_keys):
            path = base / name
            try:
                keys.append(load_pem(path.read_bytes(), str(path)))
            except (OSError, ValueError, UnsupportedAlgorithm) as exc:
                problems.append(f"jwt.public_keys[{i}]: {path}: {exc}")
        if cfg.jwks_file is not None:
            path = base / cfg.jwks_file
            try:
                keys.extend(load_jwks(path.read_text(encoding="utf-8"), str(path)))
            except (OSError, ValueError) as exc:
                problems.append(f"jwt.jwks_file: {path}: {exc}")
        if problems:
            raise ConfigError(problems)
        return cls(cfg.secret, tuple(keys))

    def __len__(self) -> int:
        return len(self._keys) + (self._secret is not None)

    def candidates(self, header: Mapping[str, Any]) -> tuple[Key, ...]:
        """Every key that may have signed a token with this header, most specific first.

        A `kid` that names a key selects exactly that key. Without one (or with a kid no key has,
        when kid-less keys remain) every key of the algorithm's family is a candidate and the
        verifier tries each: a miss costs one signature check per extra key (~50 us for RSA-2048,
        ~100 us for P-256), paid only on a cache miss. Give keys a kid to avoid it.
        """
        alg = header.get("alg")
        if not isinstance(alg, str) or family(alg) is None:
            raise AuthError(
                "algorithm",
                "token algorithm is not supported",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            )
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._by_kid:
            key = self._by_kid[kid]
            if not key.fits(alg):
                message = f'token algorithm {alg[:16]} does not match signing key "{_shown(kid)}"'
                raise AuthError("algorithm", message, code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION)
            return (key,)
        # HS* is only ever checked against shared secrets, never a public key: that is what stops
        # an attacker signing HS256 with the (public) RSA key as the HMAC secret.
        found = [k for k in ([self._secret] if self._secret else []) + list(self._keys) if k.fits(alg)]
        if isinstance(kid, str):
            # A kid no key carries: fall back only to keys that have no kid of their own (the secret,
            # PEM files), so rotation mistakes surface as unknown_kid rather than as bad signatures.
            found = [k for k in found if k.kid is None]
            if not found:
                raise AuthError(
                    "unknown_kid",
                    f'signing key "{_shown(kid)}" is not known',
                    code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                )
        if not found:
            raise AuthError(
                "algorithm",
                f"no configured key can verify a token signed with {alg[:16]}",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            )
        return tuple(found)

    def for_token(self, header: Mapping[str, Any]) -> Any:
        """The key to verify a token with (the first candidate; see `candidates` for the rest)."""
        return self.candidates(header)[0].key
