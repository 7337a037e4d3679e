"""`serve` checks the upstream login role's posture (the doctor's login-role checks) at start and on
reload: an unsafe login refuses the start, or rejects the reload, unless
upstream.accept_unsafe_login_role accepts the risk. A dedicated login role, dropped afterwards."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rlsproxy.config import load_config
from rlsproxy.devcluster import ALICE
from tests.integration.conftest import token_for
from tests.support.ports import free_ports
from tests.support.proxy import JWT_SECRET, RunningProxy

ROOT = Path(__file__).resolve().parents[2]
LOGIN, PASSWORD = "posture_login", "posture-login-pw"
GRANT = f"GRANT SELECT ON public.notes TO {LOGIN};"
REVOKE = f"REVOKE ALL ON public.notes FROM {LOGIN};"


@pytest.fixture
def login(pg: Any) -> Iterator[str]:
    """A clean login role like the demo's authenticator: NOINHERIT, member of anon and authenticated."""
    pg.psql(
        f"CREATE ROLE {LOGIN} LOGIN NOINHERIT PASSWORD '{PASSWORD}';\nGRANT anon, authenticated TO {LOGIN};"
    )
    try:
        yield LOGIN
    finally:
        pg.psql(f"{REVOKE}\nDROP OWNED BY {LOGIN};\nDROP ROLE {LOGIN};")


def write_config(path: Path, pg: Any, extra: str = "") -> tuple[int, int]:
    port, http_port = free_ports(2)
    path.write_text(
        f"""
listen: {{host: 127.0.0.1, port: {port}}}
http: {{host: 127.0.0.1, port: {http_port}}}
upstream: {{host: "{pg.host}", port: {pg.port}, database: app, user: {LOGIN}, password: "{PASSWORD}"
           {extra}}}
jwt: {{secret: "{JWT_SECRET}"}}
log: {{format: text}}
"""
    )
    return port, http_port


def readyz(http_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def serve(path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "RLSPROXY_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "rlsproxy", "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def serves(path: Path, http_port: int) -> str:
    """Start `serve`, wait (bounded) until /readyz answers 200, stop it; its output."""
    process = serve(path)
    try:
        deadline = time.monotonic() + 30
        while readyz(http_port) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert process.poll() is None, "serve exited:\n" + process.communicate()[0].decode()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    return output


def test_a_table_grant_refuses_the_start(pg: Any, login: str, tmp_path: Path) -> None:
    path = tmp_path / "rlsproxy.yaml"
    write_config(path, pg)
    pg.psql(GRANT)
    process = serve(path)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 1, output
    assert "cannot start" in output
    assert f"the login role {LOGIN} is not safe" in output
    assert "login-role-privileged" in output and "public.notes (SELECT)" in output
    assert f'REVOKE ALL ON TABLE "public"."notes" FROM "{LOGIN}"' in output  # the doctor's fix
    assert "accept_unsafe_login_role" in output


def test_the_accept_key_starts_with_a_warning(pg: Any, login: str, tmp_path: Path) -> None:
    path = tmp_path / "rlsproxy.yaml"
    _, http_port = write_config(path, pg, extra=", accept_unsafe_login_role: true")
    pg.psql(GRANT)
    output = serves(path, http_port)
    assert "UNSAFE login role posture_login accepted" in output
    assert "public.notes (SELECT)" in output


def test_a_clean_login_role_starts(pg: Any, login: str, tmp_path: Path) -> None:
    path = tmp_path / "rlsproxy.yaml"
    _, http_port = write_config(path, pg)
    output = serves(path, http_port)
    assert "not safe" not in output and "UNSAFE" not in output


def test_an_unsafe_posture_rejects_the_reload(
    pg: Any, login: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rlsproxy.yaml"
    write_config(path, pg)
    proxy = RunningProxy(load_config(path), config_path=str(path))
    try:
        before = proxy.proxy.config
        path.write_text(path.read_text().replace("log: {format: text}", "log: {format: text, level: DEBUG}"))
        pg.psql(GRANT)
        with caplog.at_level(logging.ERROR, logger="rlsproxy"):
            ok, message = proxy.call(proxy.proxy.reload())
        assert not ok and message.startswith("reload rejected: upstream.user: the login role")
        assert proxy.proxy.config is before  # the running configuration stays
        assert any("public.notes (SELECT)" in r.getMessage() for r in caplog.records)
        with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:  # still serving
            assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        pg.psql(REVOKE)
        ok, message = proxy.call(proxy.proxy.reload())
        assert ok and proxy.proxy.config.log.level == "DEBUG"
    finally:
        proxy.stop()
