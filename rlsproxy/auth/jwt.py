"""Verifying client tokens against the configured keys, with a cache so a reconnect costs a dict lookup."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from jwt import PyJWT, get_unverified_header
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from rlsproxy.auth.keys import KeyStore
from rlsproxy.config import JwtConfig
from rlsproxy.errors import AuthError
from rlsproxy.wire import sqlstate

_CODE = sqlstate.INVALID_AUTHORIZATION_SPECIFICATION
_MAX_ALG_IN_MESSAGE = 16


def _fail(reason: str, message: str) -> NoReturn:
    # `from None`: pyjwt's exception text is never shown, and its chain could carry token bytes.
    raise AuthError(reason, message, code=_CODE) from None


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return repr(ts)


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int, and json.loads accepts NaN/Infinity: a NaN exp would never compare as expired.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail("malformed", f'token claim "{name}" must be a number of seconds since the epoch')
    return float(value)


class TokenVerifier:
    """Checks signature, algorithm, time window, audience, issuer and required claims of a JWT."""

    def __init__(
        self,
        cfg: JwtConfig,
        keys: KeyStore,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int | None = None,
    ) -> None:
        # "none" never verifies anything, whatever a configuration says.
        self._algorithms = frozenset(a for a in cfg.algorithms if a.lower() != "none")
        self._keys = keys
        self.clock = clock
        self.leeway_s = float(cfg.leeway_s)
        self.cache_size = cfg.cache_size if cache_size is None else cache_size
        self._audience = list(cfg.audience) if cfg.audience else None
        self._issuer = cfg.issuer
        # pyjwt reads its own wall clock for exp/nbf/iat; those are checked here with `clock` instead.
        self._decoder = PyJWT(
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": self._audience is not None,
                "verify_iss": self._issuer is not None,
                "require": list(cfg.required_claims),
            }
        )
        # sha256(token) -> (claims, moment the token stops being valid). Insertion order = age.
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthError. The returned dict is shared with the cache: do not mutate it."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            if self.clock() < entry[1]:
                self.cache_hits += 1
                return entry[0]
            # Past exp + leeway: verify again, which reports it as expired.
            del self._cache[digest]
        self.cache_misses += 1
        claims, deadline = self._verify(token)
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                self._cache.popitem(last=False)
            self._cache[digest] = (claims, deadline)
        return claims

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def keys(self) -> KeyStore:
        return self._keys

    def _verify(self, token: str) -> tuple[dict[str, Any], float]:
        try:
            header = get_unverified_header(token)
        except PyJWTError:
            _fail("malformed", "token is not a well-formed JWT")
        alg = header.get("alg")
        # Decided from the allowlist alone, before any key is touched.
        if not isinstance(alg, str) or alg not in self._algorithms:
            shown = alg[:_MAX_ALG_IN_MESSAGE] if isinstance(alg, str) else "missing"
            _fail(
                "algorithm",
                f'token algorithm "{shown}" is not allowed (allowed: {", ".join(sorted(self._algorithms))})',
            )
        claims = self._decode(token, alg, self._keys.candidates(header))
        now = self.clock()
        exp = _time_claim(claims, "exp")
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if exp is not None and exp <= now - self.leeway_s:
            _fail("expired", f"token expired at {_iso(exp)}")
        if nbf is not None and nbf > now + self.leeway_s:
            _fail("not_yet_valid", f"token is not valid before {_iso(nbf)}")
        if iat is not None and iat > now + self.leeway_s:
            _fail("not_yet_valid", f"token is issued in the future ({_iso(iat)})")
        return claims, (exp + self.leeway_s if exp is not None else math.inf)

    def _decode(self, token: str, alg: str, candidates: tuple[Any, ...]) -> dict[str, Any]:
        for candidate in candidates:
            try:
                return self._decoder.decode(
                    token,
                    candidate.key,
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=self._issuer,
                )
            except (InvalidSignatureError, InvalidKeyError):
                continue  # the next candidate key may be the signer
            except MissingRequiredClaimError as exc:
                _fail("missing_claim", f'token is missing the required claim "{exc.claim}"')
            except InvalidAudienceError:
                expected = ", ".join(self._audience or ())
                _fail("audience", f"token audience is not accepted (expected one of: {expected})")
            except InvalidIssuerError:
                _fail("issuer", f'token issuer is not accepted (expected "{self._issuer}")')
            except InvalidAlgorithmError:
                _fail("algorithm", f'token algorithm "{alg}" is not allowed')
            except PyJWTError:
                _fail("malformed", "token is not a well-formed JWT")
        _fail("bad_signature", "token signature does not verify")
