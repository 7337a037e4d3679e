"""A client without a token is asked for a password: one that is not a JWT at all (a database
password typed at psql's prompt) is refused as before (FATAL 28000), with a hint saying what the
password is and how else a token is passed."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from rlsproxy.config import RolesConfig
from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.integration.test_auth_proxy import startup_error
from tests.support.proxy import RunningProxy
from tests.support.rawpg import RawConnection

PASSWORD_WORDS = "The password is the client's JWT"
OPTIONS_WORDS = "options='-c rlsproxy.jwt=<token>'"
ANONYMOUS_WORDS = "options='-c rlsproxy.jwt=' (empty) for anonymous access"


def password_refusal(proxy: RunningProxy, password: str) -> dict[str, str]:
    return startup_error(proxy, {}, password=password)


def test_a_database_password_gets_the_hint(proxy: RunningProxy) -> None:
    fields = password_refusal(proxy, "authenticator-pw")
    assert fields["S"] == "FATAL"
    assert fields["C"] == "28000"
    assert fields["M"] == "token is not a well-formed JWT"
    assert PASSWORD_WORDS in fields["H"] and OPTIONS_WORDS in fields["H"] and ANONYMOUS_WORDS in fields["H"]
    assert "authenticator-pw" not in str(fields)


def test_no_anonymous_in_the_hint_when_anonymous_clients_are_refused(make_proxy: Any) -> None:
    proxy = make_proxy(
        roles=RolesConfig(allowed=("anon", "authenticated"), default="authenticated", anonymous=None)
    )
    fields = password_refusal(proxy, "hunter2")
    assert fields["C"] == "28000"
    assert PASSWORD_WORDS in fields["H"] and OPTIONS_WORDS in fields["H"]
    assert "anonymous" not in fields["H"]


def test_a_jwt_as_the_password_still_works(proxy: RunningProxy) -> None:
    raw = RawConnection(proxy.port, {"user": "app", "database": "app"}, password=token_for(ALICE))
    try:
        assert raw.greeting[-1][0] == "Z", raw.greeting
    finally:
        raw.close()


def test_psql_shows_the_hint(proxy: RunningProxy, pg: Any) -> None:
    """What someone trying the proxy sees: libpq prints the server's HINT under the FATAL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = "authenticator-pw"
    proc = subprocess.run(
        [str(pg.bindir / "psql"), "-X", "-w", "-h", "127.0.0.1", "-p", str(proxy.port), "-U", "app", "app"],
        input="select 1",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc
    assert "FATAL:  token is not a well-formed JWT" in proc.stderr
    assert f"HINT:  {PASSWORD_WORDS}" in proc.stderr


@pytest.mark.parametrize("password", ["a.b.c", "x" * 200])
def test_other_non_jwts_are_refused_the_same_way(proxy: RunningProxy, password: str) -> None:
    fields = password_refusal(proxy, password)
    assert fields["C"] == "28000" and fields["M"] == "token is not a well-formed JWT"
    assert PASSWORD_WORDS in fields["H"]
