"""The bypass audit trail: JSON lines on disk at once, logrotate, fail closed, no secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlsproxy.audit import AuditLog, AuditUnavailable, fingerprint
from rlsproxy.config import AuditConfig

T0 = 1_700_000_000.123456  # 2023-11-14T22:13:20.123Z


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lines_are_json_with_ts_and_event_and_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(AuditConfig(path=str(path)), clock=lambda: T0)
    log.open()
    log.write("bypass.start", service="etl", label="job:nightly-sync", sub="svc-1", role="service_role")
    # Read before close: the line must already be there.
    assert lines(path) == [
        {
            "ts": "2023-11-14T22:13:20.123Z",
            "event": "bypass.start",
            "service": "etl",
            "label": "job:nightly-sync",
            "sub": "svc-1",
            "role": "service_role",
        }
    ]
    log.write("bypass.end", duration_s=1.5, statements=3, bytes_in=10, bytes_out=20)
    assert [line["event"] for line in lines(path)] == ["bypass.start", "bypass.end"]
    log.close()


def test_the_file_is_private_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"event":"earlier"}\n', encoding="utf-8")
    os.chmod(path, 0o600)
    log = AuditLog(AuditConfig(path=str(path)))
    log.open()
    log.write("bypass.denied", reason="bypass_no_label")
    log.close()
    assert [line["event"] for line in lines(path)] == ["earlier", "bypass.denied"]
    fresh = tmp_path / "fresh.log"
    log = AuditLog(AuditConfig(path=str(fresh)))
    log.open()
    log.close()
    assert fresh.stat().st_mode & 0o077 == 0


def test_reopen_after_logrotate_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(AuditConfig(path=str(path)))
    log.open()
    log.write("bypass.start", n=1)
    rotated = tmp_path / "audit.log.1"
    path.rename(rotated)
    log.write("bypass.statement", n=2)  # still the old file until reopened, as with any logger
    log.reopen()
    log.write("bypass.end", n=3)
    log.close()
    assert [line["n"] for line in lines(rotated)] == [1, 2]
    assert [line["n"] for line in lines(path)] == [3]


@pytest.mark.parametrize("where", ["directory", "missing_parent"])
def test_unwritable_path_fails_closed(tmp_path: Path, where: str) -> None:
    path = tmp_path if where == "directory" else tmp_path / "no" / "such" / "audit.log"
    log = AuditLog(AuditConfig(path=str(path)))
    with pytest.raises(AuditUnavailable):
        log.open()
    failures: list[None] = []
    log = AuditLog(AuditConfig(path=str(path)), on_failure=lambda: failures.append(None))
    with pytest.raises(AuditUnavailable):
        log.write("bypass.start")  # never opened
    assert len(failures) == 1


def test_write_failure_is_counted_and_raised(tmp_path: Path) -> None:
    failures: list[None] = []
    log = AuditLog(AuditConfig(path=str(tmp_path / "a.log")), on_failure=lambda: failures.append(None))
    log.open()
    assert log._fd is not None
    os.close(log._fd)  # the descriptor goes bad underneath: EBADF on write
    with pytest.raises(AuditUnavailable):
        log.write("bypass.statement")
    assert len(failures) == 1
    log._fd = None


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(AuditConfig(path="-"), clock=lambda: T0)
    log.open()
    log.write("bypass.start", service="etl")
    log.reopen()  # a no-op for stdout
    log.write("bypass.end", statements=0)
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in out] == ["bypass.start", "bypass.end"]


@pytest.mark.parametrize("name", ["token", "password", "jwt", "Password", "secret"])
def test_credential_fields_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(AuditConfig(path=str(path)))
    log.open()
    with pytest.raises(ValueError, match="not allowed"):
        log.write("bypass.start", **{name: "eyJhbGciOi..."})
    with pytest.raises(ValueError, match="reserved"):
        log.write("bypass.start", ts="forged")
    log.close()
    assert path.read_text(encoding="utf-8") == ""


def test_fingerprint_ignores_literals_spacing_case_and_comments() -> None:
    a = fingerprint("SELECT * FROM users WHERE id = 42 AND name = 'alice'")
    b = fingerprint("select *\n  from USERS where id=7 and name='bob' -- who")
    assert a["fingerprint"] == b["fingerprint"]
    assert len(a["fingerprint"]) == 16
    assert a["normalized"] == "SELECT * FROM users WHERE id = $1 AND name = $2"
    assert fingerprint("select * from orders where id = 1")["fingerprint"] != a["fingerprint"]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO users (name, pw) VALUES ('bob', 'hunter2')",
        "ALTER ROLE bob WITH PASSWORD 'hunter2'",  # pglast's normalize() leaves DDL literals in place
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (password 'hunter2')",
        "select 1 /* hunter2 */ -- hunter2",
        "DO $body$ BEGIN PERFORM 'hunter2'; END $body$",
        "select E'hunter2', U&'hunter2', x'0f', b'01'",
    ],
)
def test_fingerprint_never_contains_the_literal(sql: str) -> None:
    got = fingerprint(sql)
    assert "hunter2" not in json.dumps(got)
    assert "hunter2" in sql
    # A 64-bit hash over the literal could be brute-forced: it must not depend on it.
    assert got["fingerprint"] == fingerprint(sql.replace("hunter2", "letmein"))["fingerprint"]


def test_fingerprint_of_text_the_scanner_rejects() -> None:
    assert fingerprint("select 'hunter2") == {"fingerprint": "unscannable", "normalized": ""}


def test_placeholders_continue_after_existing_parameters() -> None:
    assert fingerprint("select $2, 'x', $1")["normalized"] == "select $2, $3, $1"


def test_statement_fields_follow_the_config(tmp_path: Path) -> None:
    sql = "update t set pw = 'hunter2'"
    for mode, expected in [
        ("none", {}),
        ("full", {"statement": sql}),
        ("fingerprint", fingerprint(sql)),
    ]:
        log = AuditLog(AuditConfig(path=str(tmp_path / "a.log"), statements=mode))  # type: ignore[arg-type]
        assert log.statement_fields(sql) == expected
