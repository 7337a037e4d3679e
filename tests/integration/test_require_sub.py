"""jwt.require_sub: a token without a subject is refused (28000) at startup and in-band; the
anonymous role needs none; `require_sub: false` accepts such tokens with auth.uid() NULL."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
import pytest

from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.integration.test_auth_proxy import assert_still_serves, startup_error
from tests.support.proxy import RunningProxy, base_config

WHO = "select coalesce(auth.uid()::text, 'none'), current_user::text"
NO_SUB = {"none": None, "empty": ""}


@pytest.mark.parametrize("case", sorted(NO_SUB))
def test_token_without_subject_refused_at_startup(proxy: RunningProxy, case: str) -> None:
    token = token_for(NO_SUB[case])
    fields = startup_error(proxy, {"options": f"-c rlsproxy.jwt={token}"})
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert fields["M"].startswith("token has no subject (sub)"), fields
    assert token not in str(fields)
    with pytest.raises(psycopg.OperationalError, match=r"token has no subject \(sub\)"):
        psycopg.connect(proxy.dsn(token=token))  # as the password too
    assert_still_serves(proxy)


@pytest.mark.parametrize("case", sorted(NO_SUB))
def test_token_without_subject_refused_in_band(proxy: RunningProxy, case: str) -> None:
    token = token_for(NO_SUB[case])
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match=r"has no subject \(sub\)"):
            conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token])
        conn.rollback()
        assert conn.execute(WHO).fetchone() == (ALICE, "authenticated")  # identity unchanged


def test_anonymous_role_needs_no_subject(proxy: RunningProxy) -> None:
    anon = token_for(None, role="anon")  # e.g. a Supabase anon key
    with psycopg.connect(proxy.dsn(token=anon), autocommit=True) as conn:
        assert conn.execute(WHO).fetchone() == ("none", "anon")
    with psycopg.connect(proxy.dsn(token=""), autocommit=True) as conn:  # no token at all
        assert conn.execute(WHO).fetchone() == ("none", "anon")
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:  # in-band, too
        conn.execute("select set_config('rlsproxy.jwt', %s, true)", [anon])
        assert conn.execute(WHO).fetchone() == ("none", "anon")


def test_require_sub_off_accepts_tokens_without_subject(make_proxy: Any, pg: Any) -> None:
    config = base_config(pg)
    proxy = make_proxy(replace(config, jwt=replace(config.jwt, require_sub=False)))
    token = token_for(None)
    with psycopg.connect(proxy.dsn(token=token), autocommit=True) as conn:
        assert conn.execute(WHO).fetchone() == ("none", "authenticated")
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as conn:
        conn.execute("select set_config('rlsproxy.jwt', %s, true)", [token])
        assert conn.execute(WHO).fetchone() == ("none", "authenticated")
