"""Client-side TLS (listen.tls): SSLRequest upgrades the connection; require refuses plaintext; a token
is never asked for as a cleartext password from a non-loopback address without TLS."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import ListenConfig, TlsConfig, load_config
from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD, BOB
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes
from rlsproxy.wire.startup import build_startup_message
from tests.integration.conftest import token_for
from tests.support.certs import Authority, Issued, make_ca, non_loopback_ipv4
from tests.support.ports import free_port
from tests.support.proxy import JWT_SECRET, RunningProxy
from tests.support.rawpg import RawConnection

LOCAL_IP = non_loopback_ipv4()
SSL_REQUEST = struct.pack("!ii", 8, codes.SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!ii", 8, codes.GSSENC_REQUEST_CODE)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_cert(ca: Authority) -> Issued:
    return ca.issue("proxy", ["localhost", "127.0.0.1", *([LOCAL_IP] if LOCAL_IP else [])])


def tls_listen(cert: Issued, *, host: str = "127.0.0.1", require: bool = False, **kw: Any) -> ListenConfig:
    return ListenConfig(host=host, port=0, tls=TlsConfig(str(cert.cert), str(cert.key), require), **kw)


@pytest.fixture
def tls_proxy(make_proxy: Callable[..., RunningProxy], server_cert: Issued) -> RunningProxy:
    return make_proxy(listen=tls_listen(server_cert))


def conninfo(port: int, *, host: str = "127.0.0.1", token: str | None = None, **params: str) -> str:
    parts = [f"host={host} port={port} dbname=app user=app connect_timeout=5"]
    if token is not None:
        parts.append(f"options='-c rlsproxy.jwt={token}'")
    return " ".join(parts + [f"{k}={v}" for k, v in params.items()])


def titles(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("select title from notes order by title").fetchall()]


def alice_titles(pg: Any) -> list[str]:
    """What RLS lets Alice see, read directly (her notes and the public ones)."""
    out = pg.psql(
        f"select title from notes where user_id = '{ALICE}' or is_public order by title",
    )
    return out.splitlines()


def psql_binary(pg: Any) -> str:
    return shutil.which("psql", path="/usr/bin") or str(pg.bindir / "psql")


def raw_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    return sock


def read_error(sock: socket.socket) -> dict[str, str]:
    data = b""
    while len(data) < 5 or len(data) < 1 + int.from_bytes(data[1:5], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data[:1] == b"E", data
    return be.parse_fields(data[5 : 1 + int.from_bytes(data[1:5], "big")])


# ---------------------------------------------------------------------------------------------
# TLS offered


def test_sslmode_require_sees_rows_through_rls(tls_proxy: RunningProxy, pg: Any) -> None:
    with psycopg.connect(conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert titles(conn) == alice_titles(pg)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_with_the_ca(tls_proxy: RunningProxy, ca: Authority, pg: Any, host: str) -> None:
    dsn = conninfo(
        tls_proxy.port, host=host, token=token_for(ALICE), sslmode="verify-full", sslrootcert=str(ca.cert)
    )
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert titles(conn) == alice_titles(pg)


def test_token_as_password_over_tls(tls_proxy: RunningProxy, ca: Authority) -> None:
    dsn = conninfo(tls_proxy.port, sslmode="verify-full", sslrootcert=str(ca.cert), password=token_for(BOB))
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (BOB,)


def test_verify_full_with_another_ca_fails(tls_proxy: RunningProxy, tmp_path: Path) -> None:
    other = make_ca(tmp_path, "some other CA")
    dsn = conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="verify-full", sslrootcert=str(other.cert))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn)
    with psycopg.connect(conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # the proxy carries on


def test_psql_verify_full(tls_proxy: RunningProxy, ca: Authority, pg: Any) -> None:
    dsn = (
        f"host=localhost port={tls_proxy.port} dbname=app user=app sslmode=verify-full sslrootcert={ca.cert}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGOPTIONS"] = f"-c rlsproxy.jwt={token_for(ALICE)}"
    proc = subprocess.run(
        [psql_binary(pg), "-X", "-A", "-t", "-d", dsn, "-c", "select title from notes order by title"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == alice_titles(pg)
    # with the token as the password (PGPASSWORD), and psql reports the TLS connection
    env.pop("PGOPTIONS")
    env["PGPASSWORD"] = token_for(ALICE)
    proc = subprocess.run(
        [psql_binary(pg), "-X", "-d", dsn, "-c", "\\conninfo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SSL connection (protocol: TLSv1." in proc.stdout


def test_prefer_upgrades_and_disable_stays_plaintext(tls_proxy: RunningProxy) -> None:
    with psycopg.connect(conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="prefer")) as conn:
        assert conn.pgconn.ssl_in_use
    with psycopg.connect(conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


def test_gssenc_request_is_answered_n(tls_proxy: RunningProxy) -> None:
    with raw_socket(tls_proxy.port) as sock:
        sock.sendall(GSSENC_REQUEST)
        assert sock.recv(1) == b"N"
    with psycopg.connect(
        conninfo(tls_proxy.port, token=token_for(ALICE), gssencmode="prefer", sslmode="require")
    ) as conn:
        assert conn.pgconn.ssl_in_use


def test_plaintext_sent_after_ssl_request_is_refused(tls_proxy: RunningProxy) -> None:
    """Bytes that follow the SSLRequest before the answer could be injected (CVE-2021-23214)."""
    startup = build_startup_message({"user": "app", "database": "app"})
    with raw_socket(tls_proxy.port) as sock:
        sock.sendall(SSL_REQUEST + startup)
        fields = read_error(sock)
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert "unencrypted data after SSLRequest" in fields["M"]


def test_failed_handshake_does_not_stop_the_proxy(tls_proxy: RunningProxy) -> None:
    with raw_socket(tls_proxy.port) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        sock.sendall(b"this is not a TLS ClientHello" * 4)
        sock.settimeout(5)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    with psycopg.connect(conninfo(tls_proxy.port, token=token_for(ALICE), sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------------
# TLS required, TLS absent


def test_require_refuses_plaintext_with_28000(
    make_proxy: Callable[..., RunningProxy], server_cert: Issued, pg: Any
) -> None:
    proxy = make_proxy(listen=tls_listen(server_cert, require=True))
    raw = RawConnection(proxy.port, {"user": "app", "database": "app"})
    try:
        kind, body = raw.greeting[-1]
        assert kind == "E"
        fields = be.parse_fields(body)
        assert (fields["S"], fields["C"]) == ("FATAL", "28000")
        assert fields["M"] == "rlsproxy: TLS is required (listen.tls.require); connect with sslmode=require"
        assert raw.closed_by_peer()
    finally:
        raw.close()
    with pytest.raises(psycopg.OperationalError, match="TLS is required"):
        psycopg.connect(conninfo(proxy.port, token=token_for(ALICE), sslmode="disable"))
    with psycopg.connect(conninfo(proxy.port, token=token_for(ALICE), sslmode="require")) as conn:
        assert titles(conn) == alice_titles(pg)


def test_without_tls_config_ssl_request_is_answered_n(proxy: RunningProxy) -> None:
    with raw_socket(proxy.port) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"N"
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(conninfo(proxy.port, token=token_for(ALICE), sslmode="require"))
    with psycopg.connect(conninfo(proxy.port, token=token_for(ALICE), sslmode="prefer")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


# ---------------------------------------------------------------------------------------------
# A token as a cleartext password from a non-loopback address


@pytest.fixture
def remote_proxy(
    make_proxy: Callable[..., RunningProxy], server_cert: Issued
) -> Callable[..., tuple[RunningProxy, str]]:
    """A proxy that sees its client at a non-loopback address: bound to one of this machine's own
    addresses (`hostname -I`); where the machine has none, its loopback check is replaced."""

    def make(**listen: Any) -> tuple[RunningProxy, str]:
        proxy = make_proxy(listen=tls_listen(server_cert, host=LOCAL_IP or "127.0.0.1", **listen))
        if LOCAL_IP is None:
            proxy.proxy.peer_is_local = lambda host: False
        return proxy, LOCAL_IP or "127.0.0.1"

    return make


def test_cleartext_password_without_tls_is_refused_from_afar(
    remote_proxy: Callable[..., tuple[RunningProxy, str]],
) -> None:
    proxy, host = remote_proxy()
    plain = conninfo(proxy.port, host=host, sslmode="disable", password=token_for(ALICE))
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(plain)
    message = str(info.value)
    assert (
        "a token sent as a cleartext password without TLS is refused from a non-loopback address" in message
    )
    assert "connect with sslmode=require" in message  # the hint, since this proxy offers TLS
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_auth_failures_total", {"reason": "cleartext_password"}) == 1
    # the same password over TLS is fine
    with psycopg.connect(plain.replace("sslmode=disable", "sslmode=require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
    # a token in the startup packet is not asked for, so not refused
    with psycopg.connect(conninfo(proxy.port, host=host, sslmode="disable", token=token_for(ALICE))) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


def test_raw_refusal_is_28000_before_the_password_is_asked_for(
    remote_proxy: Callable[..., tuple[RunningProxy, str]],
) -> None:
    proxy, host = remote_proxy()
    with raw_socket(proxy.port, host) as sock:
        sock.sendall(build_startup_message({"user": "app", "database": "app"}))
        fields = read_error(sock)  # an ErrorResponse, not AuthenticationCleartextPassword
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")


def test_cleartext_password_allowed_by_config(remote_proxy: Callable[..., tuple[RunningProxy, str]]) -> None:
    proxy, host = remote_proxy(allow_cleartext_password_without_tls=True)
    plain = conninfo(proxy.port, host=host, sslmode="disable", password=token_for(ALICE))
    with psycopg.connect(plain) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


def test_cleartext_password_over_loopback_is_allowed(proxy: RunningProxy) -> None:
    with psycopg.connect(
        f"postgresql://app:{token_for(ALICE)}@127.0.0.1:{proxy.port}/app?sslmode=disable"
    ) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


def test_reload_reads_a_renewed_certificate(pg: Any, tmp_path: Path) -> None:
    first, second = make_ca(tmp_path / "first"), make_ca(tmp_path / "second")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"

    def install(ca: Authority) -> None:
        issued = ca.issue("proxy", ["localhost", "127.0.0.1"])
        cert.write_bytes(issued.cert.read_bytes())
        key.write_bytes(issued.key.read_bytes())

    install(first)
    path = tmp_path / "rlsproxy.yaml"
    path.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {free_port()}, tls: {{cert: server.crt, key: server.key}}}}
http: {{enabled: false}}
upstream: {{host: "{pg.host}", port: {pg.port}, database: app, user: authenticator,
           password: "{AUTHENTICATOR_PASSWORD}"}}
jwt: {{secret: "{JWT_SECRET}"}}
"""
    )
    proxy = RunningProxy(load_config(path), config_path=str(path))
    try:

        def verified_by(ca: Authority) -> psycopg.Connection[Any]:
            root = str(ca.cert)
            return psycopg.connect(
                conninfo(proxy.port, token=token_for(ALICE), sslmode="verify-full", sslrootcert=root)
            )

        with verified_by(first) as conn:
            assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        install(second)  # renewed in place, e.g. by cert-manager
        assert proxy.call(proxy.proxy.reload()) == (True, "reloaded")
        with verified_by(second) as conn:
            assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            verified_by(first)
        # a key that does not match the certificate is refused, and the running one stays
        key.write_bytes(first.issue("other", ["localhost"]).key.read_bytes())
        ok, message = proxy.call(proxy.proxy.reload())
        assert not ok and "listen.tls: cannot use certificate" in message
        with verified_by(second) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        proxy.stop()
