"""The proxy's own upstream login: cleartext, md5, and SCRAM-SHA-256 against scramp's server side."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from scramp import ScramMechanism

from rlsproxy.auth.upstream import UpstreamAuth
from rlsproxy.errors import ProxyError

USER = "authenticator"
PASSWORD = "s3cret pa55"


def test_ok_sends_nothing() -> None:
    auth = UpstreamAuth(USER, None)
    assert auth.respond(0, b"") is None
    assert auth.done


def test_cleartext() -> None:
    assert UpstreamAuth(USER, PASSWORD).respond(3, b"") == PASSWORD.encode() + b"\0"


def test_md5_matches_hand_computed_digest() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"s3cret pa55authenticator").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert UpstreamAuth(USER, PASSWORD).respond(5, salt) == expected.encode() + b"\0"
    # A fixed value, so a change in how the digest is built cannot pass by also changing the test.
    assert UpstreamAuth("user", "pw").respond(5, b"salt") == b"md5556e77d43ab6e6d60f9c21feeee243f4\0"


def test_md5_bad_salt() -> None:
    with pytest.raises(ProxyError) as info:
        UpstreamAuth(USER, PASSWORD).respond(5, b"abc")
    assert info.value.sqlstate == "08P01" and info.value.fatal


@pytest.mark.parametrize(("code", "payload"), [(3, b""), (5, b"salt"), (10, b"SCRAM-SHA-256\0\0")])
def test_missing_password(code: int, payload: bytes) -> None:
    with pytest.raises(ProxyError) as info:
        UpstreamAuth(USER, None).respond(code, payload)
    assert info.value.sqlstate == "28P01" and info.value.fatal
    assert f'"{USER}"' in info.value.message and "password" in info.value.message


@pytest.mark.parametrize(("code", "name"), [(7, "GSSAPI"), (9, "SSPI"), (2, "Kerberos"), (42, "code 42")])
def test_unsupported_methods(code: int, name: str) -> None:
    with pytest.raises(ProxyError) as info:
        UpstreamAuth(USER, PASSWORD).respond(code, b"")
    assert info.value.sqlstate == "08006" and info.value.fatal
    assert name in info.value.message and USER in info.value.message
    assert PASSWORD not in info.value.message


def test_scram_plus_only_refused() -> None:
    with pytest.raises(ProxyError) as info:
        UpstreamAuth(USER, PASSWORD).respond(10, b"SCRAM-SHA-256-PLUS\0\0")
    assert info.value.sqlstate == "08006"
    assert "SCRAM-SHA-256-PLUS" in info.value.message


def test_sasl_continue_out_of_order() -> None:
    with pytest.raises(ProxyError) as info:
        UpstreamAuth(USER, PASSWORD).respond(11, b"r=x")
    assert info.value.sqlstate == "08P01"


def _exchange(client_password: str, server_password: str) -> tuple[UpstreamAuth, Any, bytes]:
    mech = ScramMechanism("SCRAM-SHA-256")
    salt, stored_key, server_key, iterations = mech.make_auth_info(server_password, iteration_count=4096)
    seen_users: list[str] = []

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        seen_users.append(username)
        return salt, stored_key, server_key, iterations

    server = mech.make_server(auth_fn)
    client = UpstreamAuth(USER, client_password)

    initial = client.respond(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
    assert initial is not None
    name, rest = initial.split(b"\0", 1)
    assert name == b"SCRAM-SHA-256"
    (length,) = struct.unpack("!i", rest[:4])
    client_first = rest[4:]
    assert length == len(client_first)
    server.set_client_first(client_first.decode())
    assert seen_users == [USER]

    final = client.respond(11, server.get_server_first().encode())
    assert final is not None and final.startswith(b"c=biws,r=")
    return client, server, final


def test_scram_full_exchange() -> None:
    client, server, final = _exchange(PASSWORD, PASSWORD)
    server.set_client_final(final.decode())
    assert client.respond(12, server.get_server_final().encode()) is None
    assert client.respond(0, b"") is None and client.done


def test_scram_wrong_password_rejected_by_server() -> None:
    from scramp import ScramException

    _client, server, final = _exchange("wrong", PASSWORD)
    with pytest.raises(ScramException):
        server.set_client_final(final.decode())


def test_scram_bad_server_signature() -> None:
    client, server, final = _exchange(PASSWORD, PASSWORD)
    server.set_client_final(final.decode())
    with pytest.raises(ProxyError) as info:
        client.respond(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert info.value.sqlstate == "08006" and info.value.fatal
    assert "server signature does not verify" in info.value.message
    assert PASSWORD not in info.value.message


def test_scram_server_reports_error() -> None:
    client, _server, _final = _exchange("wrong", PASSWORD)
    with pytest.raises(ProxyError) as info:
        client.respond(12, b"e=invalid-proof")
    assert info.value.sqlstate == "08006"
