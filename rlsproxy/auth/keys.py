"""Key material for verifying tokens: an HS secret, PEM public keys or certificates, a JWKS file, and
the key set of a JWKS URL (fetched by the asyncio edge, rlsproxy.jwks; parsed and selected here)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK, get_unverified_header
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


class RemoteKeys:
    """The key set of jwt.jwks_url: empty until the edge loads a fetched document, then the last good one.

    `on_miss` is the edge's hook: called when a token names a kid that no key has (or needs keys
    that are not loaded yet), so the set can be fetched again; it must not block.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.keys: tuple[Key, ...] = ()
        self.by_kid: dict[str, Key] = {}
        self.loaded = False
        self.on_miss: Callable[[], object] | None = None

    def load(self, text: str) -> bool:
        """Replace the set with a fetched JWKS document; True when a key of the previous set is gone.

        Raises ValueError (the previous set stays) when the document is not a usable JWKS.
        """
        keys = tuple(load_jwks(text, self.source))
        removed = any(old not in keys for old in self.keys)
        self.keys = keys
        self.by_kid = {k.kid: k for k in keys if k.kid is not None}
        self.loaded = True
        return removed

    def missed(self) -> None:
        if self.on_miss is not None:
            self.on_miss()


class KeyStore:
    """All configured verification keys, loaded once; a reload builds a new KeyStore.

    The keys of a JWKS URL (`remote`) are shared with the fetcher, which replaces them in place.
    """

    def __init__(
        self, secret: str | bytes | None = None, keys: tuple[Key, ...] = (), remote: RemoteKeys | None = None
    ) -> None:
        self._secret: Key | None = None
        if secret:
            raw = secret.encode() if isinstance(secret, str) else secret
            self._secret = Key("HS", raw, source="jwt.secret")
        self._by_kid: dict[str, Key] = {k.kid: k for k in keys if k.kid is not None}
        self._keys: tuple[Key, ...] = tuple(keys)
        self._remote = remote

    @classmethod
    def from_config(
        cls, cfg: JwtConfig, base_dir: str | Path | None = None, remote: RemoteKeys | None = None
    ) -> KeyStore:
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
        return cls(cfg.secret, tuple(keys), remote)

    def __len__(self) -> int:
        remote = len(self._remote.keys) if self._remote is not None else 0
        return len(self._keys) + remote + (self._secret is not None)

    def wants_refresh(self, token: str) -> bool:
        """Whether a fresher jwt.jwks_url set could matter for this token: none loaded yet, or a new kid."""
        remote = self._remote
        if remote is None:
            return False
        if not remote.loaded:
            return True
        try:
            kid = get_unverified_header(token).get("kid")
        except PyJWTError:
            return False  # not a JWT; the verifier says so
        return isinstance(kid, str) and kid not in self._by_kid and kid not in remote.by_kid

    def _not_loaded(self) -> AuthError:
        return AuthError(
            "jwks_not_loaded",
            "JWKS not loaded yet: the keys at jwt.jwks_url have not been fetched; try again shortly",
            code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )

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
        remote = self._remote
        if isinstance(kid, str):
            key = self._by_kid.get(kid) or (remote.by_kid.get(kid) if remote is not None else None)
            if key is not None:
                if not key.fits(alg):
                    message = f'token algorithm {alg[:16]} does not match signing key "{_shown(kid)}"'
                    raise AuthError("algorithm", message, code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION)
                return (key,)
        # HS* is only ever checked against shared secrets, never a public key: that is what stops
        # an attacker signing HS256 with the (public) RSA key as the HMAC secret.
        pool = ([self._secret] if self._secret else []) + list(self._keys)
        if remote is not None:
            pool += remote.keys
        found = [k for k in pool if k.fits(alg)]
        if isinstance(kid, str):
            # A kid no key carries: fall back only to keys that have no kid of their own (the secret,
            # PEM files), so rotation mistakes surface as unknown_kid rather than as bad signatures.
            found = [k for k in found if k.kid is None]
            if not found and remote is not None:
                remote.missed()  # perhaps rotated in at the issuer since the last fetch
                if not remote.loaded:
                    raise self._not_loaded()
            if not found:
                raise AuthError(
                    "unknown_kid",
                    f'signing key "{_shown(kid)}" is not known',
                    code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                )
        if not found and remote is not None and not remote.loaded:
            remote.missed()
            raise self._not_loaded()
        if not found:
            raise AuthError(
                "algorithm",
                f"no configured key can verify a token signed with {alg[:16]}",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            )
        return tuple(found)
