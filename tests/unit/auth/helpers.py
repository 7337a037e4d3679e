"""Key pairs, a settable clock and file helpers for the auth tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

SECRET = "dev-secret-that-is-at-least-32-bytes-long!"
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Pair:
    private_pem: str
    public_pem: bytes
    public_jwk: dict[str, Any]


def make_pair(private: Any, algorithm: Any) -> Pair:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Pair(private_pem, public_pem, json.loads(algorithm.to_jwk(public)))


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return str(path)
