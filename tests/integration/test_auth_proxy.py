"""JWT failures end the connection with a FATAL 28000/28P01 that says why; the proxy keeps serving."""

from __future__ import annotations

import time
from typing import Any

import jwt as pyjwt
import psycopg
import pytest

from rlsproxy.config.model import JwtConfig
from rlsproxy.devcluster import ALICE
from rlsproxy.wire import backend as be
from tests.integration.conftest import token_for
from tests.support.proxy import JWT_SECRET, RunningProxy
from tests.support.rawpg import RawConnection


def connect_error(proxy: RunningProxy, **dsn: Any) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(**dsn))
    return info.value


def startup_error(proxy: RunningProxy, params: dict[str, str], password: str | None = None) -> dict[str, str]:
    """The FATAL ErrorResponse's fields (libpq does not expose the SQLSTATE of a failed connect)."""
    raw = RawConnection(proxy.port, {"user": "app", "database": "app", **params}, password=password)
    try:
        kind, body = raw.greeting[-1]
        assert kind == "E", raw.greeting
        assert raw.closed_by_peer()
        return be.parse_fields(body)
    finally:
        raw.close()


def assert_still_serves(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


BAD_TOKENS = {
    "expired": (token_for(ALICE, ttl_s=-3600), "expired"),
    "bad_signature": (pyjwt.encode({"sub": ALICE, "exp": time.time() + 60}, "x" * 40, "HS256"), "signature"),
    "none_alg": (pyjwt.encode({"sub": ALICE, "exp": time.time() + 60}, None, "none"), "algorithm"),
    "garbage": ("not-a-jwt", "well-formed"),
    "role_not_allowed": (token_for(ALICE, role="service_role"), '"service_role" is not allowed'),
    "missing_exp": (pyjwt.encode({"sub": ALICE, "role": "authenticated"}, JWT_SECRET, "HS256"), '"exp"'),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_is_fatal_28000(proxy: RunningProxy, case: str) -> None:
    token, words = BAD_TOKENS[case]
    fields = startup_error(proxy, {"options": f"-c rlsproxy.jwt={token}"})
    assert fields["S"] == "FATAL"
    assert fields["C"] == "28000", fields
    assert words in fields["M"]
    assert token not in str(fields)
    err = connect_error(proxy, token=token)  # and libpq shows the reason too
    assert words in str(err)
    assert_still_serves(proxy)


def test_bad_token_as_password(proxy: RunningProxy) -> None:
    token = token_for(ALICE, ttl_s=-3600)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f"postgresql://app:{token}@127.0.0.1:{proxy.port}/app")
    assert "expired" in str(info.value)
    assert_still_serves(proxy)


def test_anonymous_refused_when_not_configured(make_proxy: Any, pg: Any) -> None:
    from rlsproxy.config import RolesConfig

    proxy = make_proxy(
        roles=RolesConfig(allowed=("anon", "authenticated"), default="authenticated", anonymous=None)
    )
    fields = startup_error(proxy, {"options": "-c rlsproxy.jwt="})
    assert fields["C"] == "28000"
    assert "token is required" in fields["M"]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("'-c role=service_role'", "role"),
        ("'-c session_authorization=postgres'", "session_authorization"),
        ("'-c work_mem=1MB -c rlsproxy.other=1'", "rlsproxy.other"),
        ("'-c log_statement=all'", "log_statement"),
        ("'-d 5'", "-d"),
    ],
)
def test_startup_options_outside_allowlist(proxy: RunningProxy, options: str, words: str) -> None:
    fields = startup_error(proxy, {"options": options.strip("'")})
    assert fields["C"] == "42501", fields
    assert words in fields["M"]
    assert_still_serves(proxy)


def test_allowed_startup_settings_apply(proxy: RunningProxy) -> None:
    dsn = proxy.dsn(token=token_for(ALICE), application_name="myapp")
    dsn = dsn.replace("options='-c ", "options='-c search_path=auth,public -c statement_timeout=1234 -c ")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select current_setting('application_name'), current_setting('search_path'),"
            " current_setting('statement_timeout')"
        ).fetchone()
        assert row is not None and row[0] == "myapp" and row[2] == "1234ms"
        assert row[1].replace(" ", "") == "auth,public"
        assert conn.info.parameter_status("application_name") == "myapp"


def test_wrong_database_is_refused(proxy: RunningProxy) -> None:
    fields = startup_error(proxy, {"database": "other", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"})
    assert fields["C"] == "3D000"


def test_bad_token_as_password_gives_28p01_or_28000(proxy: RunningProxy) -> None:
    fields = startup_error(proxy, {}, password="garbage")
    assert fields["C"] in ("28000", "28P01")
    assert "garbage" not in fields["M"]


def test_replication_connection_refused(proxy: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(token=token_for(ALICE), replication="database"))
    assert "replication" in str(info.value)


def test_a_kept_startup_packet_does_not_keep_its_token_valid(make_proxy: Any) -> None:
    """The proxy keeps what a startup packet says (reconnecting clients send the same bytes); the
    token in it is still verified at every connection, so one that expired in between is refused."""
    proxy = make_proxy(jwt=JwtConfig(algorithms=("HS256",), secret=JWT_SECRET, leeway_s=0))
    params = {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE, ttl_s=2)}"}
    first = RawConnection(proxy.port, params)
    try:
        assert first.greeting[-1][0] == "Z", first.greeting
    finally:
        first.close()
    time.sleep(2.5)
    fields = startup_error(proxy, params)  # byte for byte the packet that was accepted
    assert fields["C"] == "28000", fields
    assert "expired" in fields["M"]


def test_a_refused_startup_packet_is_refused_every_time(proxy: RunningProxy) -> None:
    params = {"options": f"-c rlsproxy.jwt={token_for(ALICE)} -c row_security=off"}
    for _ in range(2):
        fields = startup_error(proxy, params)
        assert fields["C"] == "42501", fields
        assert "row_security" in fields["M"]
    assert_still_serves(proxy)
