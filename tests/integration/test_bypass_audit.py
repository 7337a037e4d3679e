"""Service identities: audited RLS bypass through the proxy's own service login, and every refusal."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import AuditConfig, ServiceConfig
from rlsproxy.devcluster import ALICE, SERVICE_LOGIN_PASSWORD
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy, base_config

NIGHTLY = ServiceConfig(
    name="nightly-sync",
    match=(("sub", "svc:nightly-sync"), ("iss", "https://auth.example.com")),
    roles=("service_role",),
    labels=("job:nightly-*", "seed:*"),
)


def service_token(role: str = "service_role", sub: str = "svc:nightly-sync") -> str:
    return token_for(sub, role=role, extra={"iss": "https://auth.example.com"})


def bypass_config(pg: Any, audit_path: Path, statements: str = "fingerprint", **sections: Any) -> Any:
    config = base_config(pg, **sections)
    upstream = replace(
        config.upstream, service_user="rlsproxy_service", service_password=SERVICE_LOGIN_PASSWORD
    )
    return replace(
        config,
        upstream=upstream,
        services=(NIGHTLY,),
        audit=AuditConfig(path=str(audit_path), statements=statements),  # type: ignore[arg-type]
    )


def audit_lines(path: Path, *, until: str | None = None) -> list[dict[str, Any]]:
    """The audit lines; with `until`, wait (briefly) for that event: a client's close does not wait
    for the proxy to process its Terminate, so bypass.end may land a moment after close() returns."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        if until is None or any(line["event"] == until for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def connect(proxy: RunningProxy, token: str, label: str | None = None) -> psycopg.Connection[Any]:
    options = f"-c rlsproxy.jwt={token}" + (f" -c rlsproxy.label={label}" if label else "")
    return psycopg.connect(
        f"host=127.0.0.1 port={proxy.port} dbname=app user=app options='{options}'", autocommit=True
    )


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def test_labelled_job_bypasses_rls_and_is_audited(make_proxy: Any, pg: Any, audit_path: Path) -> None:
    proxy = make_proxy(bypass_config(pg, audit_path))
    token = service_token()
    total = int(pg.psql("select count(*) from notes").strip())
    with connect(proxy, token, "job:nightly-sync") as conn:
        assert conn.execute("select count(*) from notes").fetchone() == (total,)  # every row: bypass
        assert conn.execute("select current_user::text, session_user::text").fetchone() == (
            "service_role",
            "rlsproxy_service",  # the service pool's own login, not the end-user one
        )
        conn.execute("select title from notes where user_id = %s and title <> %s", (ALICE, "x")).fetchall()
    lines = audit_lines(audit_path, until="bypass.end")
    events = [line["event"] for line in lines]
    assert events[0] == "bypass.start" and events[-1] == "bypass.end"
    start = lines[0]
    assert start["service"] == "nightly-sync"
    assert start["label"] == "job:nightly-sync"
    assert start["sub"] == "svc:nightly-sync"
    assert start["role"] == "service_role"
    assert start["database"] == "app"
    assert start["client"].startswith("127.0.0.1:")
    statements = [line for line in lines if line["event"] == "bypass.statement"]
    assert len(statements) == 3
    # fingerprint mode: literals are gone, the shape of the statement stays
    fingerprinted = statements[2]["normalized"]
    assert "notes" in fingerprinted and ALICE not in fingerprinted and "'x'" not in fingerprinted
    assert all(s["session"] == start["session"] for s in statements)
    end = lines[-1]
    assert end["statements"] == 3 and end["bytes_in"] > 0 and end["bytes_out"] > 0
    assert token not in audit_path.read_text()
    assert token.split(".")[2] not in audit_path.read_text()


def test_full_statement_mode_records_text(make_proxy: Any, pg: Any, audit_path: Path) -> None:
    proxy = make_proxy(bypass_config(pg, audit_path, statements="full"))
    with connect(proxy, service_token(), "seed:demo") as conn:
        conn.execute("select count(*) from notes where title = 'alice public'")
    statements = [line for line in audit_lines(audit_path) if line["event"] == "bypass.statement"]
    assert statements[0]["statement"] == "select count(*) from notes where title = 'alice public'"


@pytest.mark.parametrize(
    ("token_kind", "label", "reason", "message"),
    [
        ("service", None, "bypass_no_label", 'service "nightly-sync" must connect with a label'),
        (
            "service",
            "job:weekly-report",
            "bypass_label_not_allowed",
            'label "job:weekly-report" is not allowed',
        ),
        ("service_wrong_role", "job:nightly-sync", "bypass_role_not_allowed", 'may not use role "postgres"'),
        ("stolen", None, "role_not_allowed", 'role "service_role" is not allowed'),
        ("user_with_label", "job:nightly-sync", "bypass_not_a_service", "only for service identities"),
    ],
)
def test_denied_bypass_is_refused_and_audited(
    make_proxy: Any, pg: Any, audit_path: Path, token_kind: str, label: str | None, reason: str, message: str
) -> None:
    proxy = make_proxy(bypass_config(pg, audit_path))
    token = {
        "service": service_token(),
        "service_wrong_role": service_token(role="postgres"),
        "stolen": token_for(ALICE, role="service_role"),  # a user token asking for the bypass role
        "user_with_label": token_for(ALICE),
    }[token_kind]
    with pytest.raises(psycopg.OperationalError) as err:
        connect(proxy, token, label)
    assert message in str(err.value)
    lines = audit_lines(audit_path)
    assert [line["event"] for line in lines] == ["bypass.denied"]
    assert lines[0]["reason"] == reason
    assert lines[0]["label"] == label
    assert token not in audit_path.read_text()
    # the proxy keeps serving
    with connect(proxy, token_for(ALICE)) as conn:
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


def test_denied_sqlstate_is_28000(make_proxy: Any, pg: Any, audit_path: Path) -> None:
    from tests.support.rawpg import RawConnection, error_fields

    proxy = make_proxy(bypass_config(pg, audit_path))
    raw = RawConnection(
        proxy.port,
        {"user": "app", "database": "app", "rlsproxy.jwt": service_token(), "rlsproxy.label": "nope:1"},
    )
    fields = error_fields(raw.greeting[-1])
    raw.close()
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert 'label "nope:1" is not allowed for service "nightly-sync"' in fields["M"]


def test_unwritable_audit_log_refuses_bypass_only(make_proxy: Any, pg: Any, tmp_path: Path) -> None:
    unwritable = tmp_path / "no-such-dir" / "audit.jsonl"
    proxy = make_proxy(bypass_config(pg, unwritable))
    with pytest.raises(psycopg.OperationalError) as err:
        connect(proxy, service_token(), "job:nightly-sync")
    assert "audit log cannot be written" in str(err.value)
    with connect(proxy, token_for(ALICE)) as conn:  # end users do not depend on the audit trail
        assert conn.execute("select count(*) from notes").fetchone() == (3,)
    families = proxy.proxy.metrics.registry
    assert (
        families.get_sample_value("rlsproxy_bypass_denied_total", {"reason": "bypass_audit_unavailable"}) == 1
    )
    # once the directory exists, bypass works again without a restart
    unwritable.parent.mkdir()
    with connect(proxy, service_token(), "job:nightly-sync") as conn:
        assert conn.execute("select current_user::text").fetchone() == ("service_role",)
    assert audit_lines(unwritable)[0]["event"] == "bypass.start"


def test_audit_failure_mid_session_ends_it_before_the_statement_runs(
    make_proxy: Any, pg: Any, audit_path: Path
) -> None:
    proxy = make_proxy(bypass_config(pg, audit_path))
    with connect(proxy, service_token(), "job:nightly-sync") as conn:
        conn.execute("select 1")
        proxy.run(proxy.proxy.audit.close)  # the trail becomes unwritable
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("insert into notes (user_id, title) values (%s, 'unaudited')", (ALICE,))
        assert "audit log cannot be written" in str(err.value)
    assert pg.psql("select count(*) from notes where title = 'unaudited'").strip() == "0"


def test_audit_log_reopens_for_logrotate(make_proxy: Any, pg: Any, audit_path: Path) -> None:
    proxy = make_proxy(bypass_config(pg, audit_path))
    with connect(proxy, service_token(), "job:nightly-sync") as conn:
        conn.execute("select 1")
    audit_lines(audit_path, until="bypass.end")
    rotated = audit_path.with_suffix(".1")
    audit_path.rename(rotated)
    proxy.run(proxy.proxy.reopen_audit)
    with connect(proxy, service_token(), "job:nightly-a") as conn:
        conn.execute("select 1")
    assert audit_lines(rotated)[-1]["event"] == "bypass.end"
    assert [line["label"] for line in audit_lines(audit_path, until="bypass.end")] == ["job:nightly-a"] * 3


def test_service_pool_has_its_own_size(make_proxy: Any, pg: Any, audit_path: Path) -> None:
    from rlsproxy.config import PoolConfig

    proxy = make_proxy(
        bypass_config(pg, audit_path, pool=PoolConfig(max_size=5, acquire_timeout_ms=300, service_max_size=1))
    )
    with connect(proxy, service_token(), "job:nightly-a") as first:
        first.execute("select 1")  # holds the only service connection
        second = connect(proxy, service_token(), "job:nightly-b")
        with pytest.raises(psycopg.OperationalError, match="pool 'service' has 1 connections"):
            second.execute("select 1")
        second.close()
        with connect(proxy, token_for(ALICE)) as user:  # the end-user pool is separate
            assert user.execute("select count(*) from notes").fetchone() == (3,)
    assert proxy.proxy.service_pool is not None and proxy.proxy.service_pool.size == 1
