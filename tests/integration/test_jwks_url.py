"""jwt.jwks_url against a local HTTPS server (test CA) serving a JWKS that the tests rotate."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt as pyjwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from rlsproxy.config import JwtConfig, load_config
from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD
from tests.support.certs import Authority, make_ca
from tests.support.ports import free_port
from tests.support.proxy import RunningProxy, base_config


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self._private = ec.generate_private_key(ec.SECP256R1())
        self.pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.jwk = {**json.loads(ECAlgorithm.to_jwk(self._private.public_key())), "kid": kid, "use": "sig"}

    def token(self, sub: str = ALICE) -> str:
        # jti: a token never seen before, so the proxy's verification cache cannot answer for it
        claims = {
            "sub": sub,
            "role": "authenticated",
            "exp": int(time.time()) + 600,
            "jti": str(time.time_ns()),
        }
        return pyjwt.encode(claims, self.pem, "ES256", headers={"kid": self.kid})


class JwksServer:
    """HTTPS on 127.0.0.1 with a certificate from the test CA; `keys`, `status` and `delay` are live."""

    def __init__(self, ca: Authority, directory: Path) -> None:
        issued = ca.issue("jwks", ["127.0.0.1"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        self.keys: list[SigningKey] = []
        self.status = 200
        self.delay = 0.0
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                time.sleep(outer.delay)
                body = json.dumps({"keys": [k.jwk for k in outer.keys]}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def jwks(ca: Authority, tmp_path: Path) -> Iterator[JwksServer]:
    server = JwksServer(ca, tmp_path)
    yield server
    server.stop()


def jwks_proxy(
    make_proxy: Callable[..., RunningProxy],
    pg: Any,
    server: JwksServer,
    ca: Authority,
    refresh_s: float = 300,
) -> RunningProxy:
    jwt = JwtConfig(
        algorithms=("ES256",), jwks_url=server.url, jwks_ca_file=str(ca.cert), jwks_refresh_s=refresh_s
    )
    return make_proxy(base_config(pg, jwt=jwt))


def fetches(proxy: RunningProxy, outcome: str) -> float:
    value = proxy.proxy.metrics.registry.get_sample_value("rlsproxy_jwks_refresh_total", {"outcome": outcome})
    return value or 0.0


def refresh(proxy: RunningProxy) -> bool:
    """What the periodic refresh does, now."""
    fetcher = proxy.proxy.jwks
    assert fetcher is not None

    async def again() -> bool:
        return await fetcher.refresh()

    return proxy.call(again())


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def connect(proxy: RunningProxy, token: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(token=token), autocommit=True)


def refused(proxy: RunningProxy, token: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        connect(proxy, token)
    return str(info.value)


def sees_alice_notes(proxy: RunningProxy, token: str) -> None:
    with connect(proxy, token) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


def test_a_new_kid_is_fetched_on_first_use(
    make_proxy: Callable[..., RunningProxy], pg: Any, jwks: JwksServer, ca: Authority
) -> None:
    old, new = SigningKey("2026-01"), SigningKey("2026-02")
    jwks.keys = [old]
    proxy = jwks_proxy(make_proxy, pg, jwks, ca)
    wait_for(lambda: fetches(proxy, "ok") == 1)
    sees_alice_notes(proxy, old.token())
    assert jwks.requests == 1  # a known kid costs no fetch

    jwks.keys = [old, new]  # the issuer rotates a key in
    sees_alice_notes(proxy, new.token())  # the connection waited for the fetch its kid triggered
    assert (fetches(proxy, "ok"), jwks.requests) == (2, 2)
    sees_alice_notes(proxy, old.token())  # the old key still works until it is removed
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_jwks_keys") == 2

    # unknown kids are rate limited: within 30 s of the last fetch a kid triggered, none at all
    stranger = SigningKey("nobody-knows")
    for _ in range(3):
        assert 'signing key "nobody-knows" is not known' in refused(proxy, stranger.token())
    assert jwks.requests == 2


def test_a_removed_kid_is_refused_after_the_periodic_refresh(
    make_proxy: Callable[..., RunningProxy], pg: Any, jwks: JwksServer, ca: Authority
) -> None:
    old, new = SigningKey("old"), SigningKey("new")
    jwks.keys = [old, new]
    proxy = jwks_proxy(make_proxy, pg, jwks, ca, refresh_s=1)
    wait_for(lambda: fetches(proxy, "ok") >= 1)
    cached = old.token()
    established = connect(proxy, cached)
    try:
        jwks.keys = [new]
        seen = fetches(proxy, "ok")
        wait_for(lambda: fetches(proxy, "ok") > seen)  # the next periodic refresh
        message = refused(proxy, old.token())
        assert 'signing key "old" is not known' in message
        # the proxy's cache of verified tokens was cleared with the withdrawn key
        assert 'signing key "old" is not known' in refused(proxy, cached)
        sees_alice_notes(proxy, new.token())
        # an established session keeps its identity, as with a reload
        assert established.execute("select auth.uid()::text").fetchone() == (ALICE,)
    finally:
        established.close()


def test_an_unreachable_endpoint_keeps_the_last_good_set(
    make_proxy: Callable[..., RunningProxy], pg: Any, jwks: JwksServer, ca: Authority
) -> None:
    key = SigningKey("k1")
    jwks.keys = [key]
    proxy = jwks_proxy(make_proxy, pg, jwks, ca)
    wait_for(lambda: fetches(proxy, "ok") == 1)
    jwks.status = 500
    assert refresh(proxy) is False
    assert fetches(proxy, "error") == 1
    sees_alice_notes(proxy, key.token())

    jwks.stop()  # nothing listening at all
    assert refresh(proxy) is False
    assert fetches(proxy, "error") == 2
    sees_alice_notes(proxy, key.token())
    assert proxy.proxy.metrics.registry.get_sample_value("rlsproxy_jwks_keys") == 1


def test_until_the_first_fetch_tokens_fail_with_jwks_not_loaded(
    make_proxy: Callable[..., RunningProxy], pg: Any, jwks: JwksServer, ca: Authority
) -> None:
    key = SigningKey("k1")
    jwks.keys = [key]
    jwks.status = 503
    proxy = jwks_proxy(make_proxy, pg, jwks, ca)
    wait_for(lambda: fetches(proxy, "error") >= 1)
    message = refused(proxy, key.token())
    assert "JWKS not loaded yet" in message
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_auth_failures_total", {"reason": "jwks_not_loaded"}) == 1

    jwks.status = 200
    fetcher = proxy.proxy.jwks
    assert fetcher is not None
    fetcher.miss_interval_s = 0  # the default (30 s) would make this connection wait for the next try
    sees_alice_notes(proxy, key.token())


def test_a_slow_endpoint_holds_a_connection_for_at_most_two_seconds(
    make_proxy: Callable[..., RunningProxy], pg: Any, jwks: JwksServer, ca: Authority
) -> None:
    old, new = SigningKey("old"), SigningKey("new")
    jwks.keys = [old]
    proxy = jwks_proxy(make_proxy, pg, jwks, ca)
    wait_for(lambda: fetches(proxy, "ok") == 1)
    jwks.keys = [old, new]
    jwks.delay = 3.5
    started = time.monotonic()
    assert 'signing key "new" is not known' in refused(proxy, new.token())
    # at most 2 s, and half the startup timeout (2 s in these tests) when that is shorter
    assert time.monotonic() - started < 2
    wait_for(lambda: fetches(proxy, "ok") == 2)  # the fetch carried on without the connection
    sees_alice_notes(proxy, new.token())


def test_reload_keeps_the_fetched_set(pg: Any, jwks: JwksServer, ca: Authority, tmp_path: Path) -> None:
    key = SigningKey("k1")
    jwks.keys = [key]
    path = tmp_path / "rlsproxy.yaml"
    port = free_port()

    def write(refresh_s: int) -> None:
        path.write_text(
            f"""
listen: {{host: 127.0.0.1, port: {port}}}
http: {{enabled: false}}
upstream: {{host: "{pg.host}", port: {pg.port}, database: app, user: authenticator,
           password: "{AUTHENTICATOR_PASSWORD}"}}
jwt: {{algorithms: [ES256], jwks_url: "{jwks.url}", jwks_ca_file: "{ca.cert}", jwks_refresh_s: {refresh_s}}}
limits: {{startup_timeout_s: 2}}
"""
        )

    write(300)
    proxy = RunningProxy(load_config(path), config_path=str(path))
    try:
        wait_for(lambda: fetches(proxy, "ok") == 1)
        assert proxy.call(proxy.proxy.reload()) == (True, "reloaded")
        sees_alice_notes(proxy, key.token())  # at once, without fetching again
        assert jwks.requests == 1
        write(600)  # how it is fetched changed: a new fetcher, which fetches at once
        assert proxy.call(proxy.proxy.reload())[0] is True
        wait_for(lambda: jwks.requests == 2)
        sees_alice_notes(proxy, key.token())
    finally:
        proxy.stop()
