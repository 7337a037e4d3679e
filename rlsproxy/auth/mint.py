"""Signing tokens: for the CLI's dev `rlsproxy token` command and for tests, never for production issuing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt


def mint_token(
    secret: str,
    *,
    sub: str | None,
    role: str | None,
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
    kid: str | None = None,
) -> str:
    """A signed JWT with iat/exp (and sub/role when given); `extra` claims are added last and win.

    `secret` is the HS secret, or a PEM private key for the asymmetric algorithms.
    """
    if algorithm.lower() == "none":
        raise ValueError("refusing to mint an unsigned token")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iat": issued, "exp": issued + ttl_s}
    if sub is not None:
        claims["sub"] = sub
    if role is not None:
        claims["role"] = role
    if extra:
        claims.update(extra)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)
