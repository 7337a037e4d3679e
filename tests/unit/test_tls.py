"""TLS contexts built from the config: what each sslmode checks, and unusable files named by key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from rlsproxy.config import ConfigError, TlsConfig, UpstreamConfig
from rlsproxy.tls import server_context, upstream_context
from tests.support.certs import make_ca


def test_disable_has_no_context() -> None:
    assert upstream_context(UpstreamConfig(sslmode="disable")) is None


@pytest.mark.parametrize(
    ("sslmode", "rootcert", "verify_mode", "check_hostname"),
    [
        ("prefer", False, ssl.CERT_NONE, False),
        ("require", False, ssl.CERT_NONE, False),
        ("require", True, ssl.CERT_REQUIRED, False),  # libpq: require with a root CA acts as verify-ca
        ("verify-ca", True, ssl.CERT_REQUIRED, False),
        ("verify-ca", False, ssl.CERT_REQUIRED, False),  # the system trust store
        ("verify-full", True, ssl.CERT_REQUIRED, True),
    ],
)
def test_what_each_sslmode_checks(
    tmp_path: Path, sslmode: str, rootcert: bool, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    ca = make_ca(tmp_path)
    cfg = UpstreamConfig(sslmode=sslmode, sslrootcert=str(ca.cert) if rootcert else None)  # type: ignore[arg-type]
    context = upstream_context(cfg)
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (verify_mode, check_hostname)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unusable_root_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as info:
        upstream_context(UpstreamConfig(sslmode="verify-full", sslrootcert=str(bad)))
    [problem] = info.value.problems
    assert problem.startswith(f"upstream.sslrootcert: cannot load {bad}: ")


def test_server_context_loads_the_pair(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    issued = ca.issue("proxy", ["localhost"])
    context = server_context(TlsConfig(str(issued.cert), str(issued.key)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_server_context_with_a_key_of_another_certificate(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    one, other = ca.issue("one", ["localhost"]), ca.issue("other", ["localhost"])
    with pytest.raises(ConfigError) as info:
        server_context(TlsConfig(str(one.cert), str(other.key)))
    [problem] = info.value.problems
    assert problem.startswith(f"listen.tls: cannot use certificate {one.cert} with key {other.key}: ")
    assert "KEY_VALUES_MISMATCH" in problem
