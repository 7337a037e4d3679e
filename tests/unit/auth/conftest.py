"""Fixtures for the auth tests; key pairs are generated once per run (RSA is slow)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.unit.auth.helpers import Clock, Pair, make_pair


@pytest.fixture(scope="session")
def rsa_pair() -> Pair:
    return make_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm)


@pytest.fixture(scope="session")
def rsa_pair2() -> Pair:
    return make_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm)


@pytest.fixture(scope="session")
def ec_pair() -> Pair:
    return make_pair(ec.generate_private_key(ec.SECP256R1()), ECAlgorithm)


@pytest.fixture(scope="session")
def ed_pair() -> Pair:
    return make_pair(ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def ec_pair2() -> Pair:
    return make_pair(ec.generate_private_key(ec.SECP256R1()), ECAlgorithm)
