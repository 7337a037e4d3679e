"""`make demo`: a throwaway Postgres with the seed's notes schema, rlsproxy in front, two users,
an audited bypass job, and `rlsproxy doctor` on the schema.

Runs the real `rlsproxy serve` and the real psql; prints what each identity sees.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rlsproxy.auth.mint import mint_token
from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD, BOB, SERVICE_LOGIN_PASSWORD, DevCluster

SECRET = "demo-secret-change-me-0123456789abcdef"
WORKDIR = Path(".demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, pg: DevCluster, port: int, http_port: int) -> None:
    path.write_text(
        f"""# Written by `make demo`.
listen: {{host: 127.0.0.1, port: {port}}}
upstream:
  host: {pg.host}
  port: {pg.port}
  database: app
  user: authenticator
  password: ${{RLSPROXY_UPSTREAM_PASSWORD}}
  service_user: rlsproxy_service          # service (bypass) sessions log in as this role
  service_password: ${{RLSPROXY_SERVICE_PASSWORD}}
pool: {{mode: session, max_size: 5}}
jwt:
  algorithms: [HS256]
  secret: ${{RLSPROXY_JWT_SECRET}}
roles:
  allowed: [anon, authenticated]
  default: authenticated
  anonymous: anon
http: {{host: 127.0.0.1, port: {http_port}}}
services:
  - name: nightly-sync
    match: {{sub: "svc:nightly-sync"}}
    roles: [service_role]
    labels: ["job:nightly-*"]
audit: {{path: audit.jsonl, statements: fingerprint}}
log: {{format: text, level: WARNING}}
"""
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("rlsproxy exited during startup")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("rlsproxy did not start listening")


def psql(pg: DevCluster, port: int, sql: str, *, options: str = "", password: str | None = None) -> str:
    env = dict(os.environ, PGOPTIONS=options, PGCONNECT_TIMEOUT="5")
    if password:
        env["PGPASSWORD"] = password
    out = subprocess.run(
        [
            str(pg.bindir / "psql"),
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return (out.stdout + out.stderr).rstrip()


def metrics_excerpt(http_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = (
        "rlsproxy_client_connections_total{",
        "rlsproxy_bypass_",
        'rlsproxy_guard_refusals_total{rule="set_role',
    )
    lines = [line for line in text.splitlines() if line.startswith(wanted) and not line.endswith(" 0.0")]
    return "\n".join(lines)


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    pg = DevCluster(workdir=WORKDIR.resolve() / "pg")
    proc: subprocess.Popen[bytes] | None = None
    try:
        banner(f"Starting a throwaway PostgreSQL {'(' + str(pg.bindir) + ')'}")
        pg.start()
        pg.install_demo()
        print(f"PostgreSQL {pg.version()} on 127.0.0.1:{pg.port}, schema from the seed (notes + 5 policies)")

        port, http_port = free_port(), free_port()
        config = WORKDIR / "rlsproxy.yaml"
        write_config(config, pg, port, http_port)
        env = dict(
            os.environ,
            RLSPROXY_JWT_SECRET=SECRET,
            RLSPROXY_UPSTREAM_PASSWORD=AUTHENTICATOR_PASSWORD,
            RLSPROXY_SERVICE_PASSWORD=SERVICE_LOGIN_PASSWORD,
        )
        banner(f"Starting rlsproxy on 127.0.0.1:{port}: rlsproxy serve --config {config}")
        proc = subprocess.Popen([sys.executable, "-m", "rlsproxy", "serve", "--config", str(config)], env=env)
        wait_for_port(port, proc)

        query = "SELECT title, is_public FROM notes ORDER BY title"
        alice = mint_token(SECRET, sub=ALICE, role="authenticated")
        bob = mint_token(SECRET, sub=BOB, role="authenticated")
        banner("User A (alice), token in options: own notes + public ones")
        print(psql(pg, port, query, options=f"-c rlsproxy.jwt={alice}"))
        banner("User B (bob), token as the password: own notes + public ones")
        print(psql(pg, port, query, password=bob))
        banner("Anonymous (empty token): public notes only")
        print(psql(pg, port, query, options="-c rlsproxy.jwt="))
        banner("Alice tries to write as bob (the policy's WITH CHECK refuses)")
        print(
            psql(
                pg,
                port,
                f"INSERT INTO notes (user_id, title) VALUES ('{BOB}', 'forged')",
                options=f"-c rlsproxy.jwt={alice}",
            )
        )
        banner("Alice tries to change her role (the proxy's guard refuses)")
        print(psql(pg, port, "SET ROLE service_role", options=f"-c rlsproxy.jwt={alice}"))
        banner("A token with a forged role is refused at connect")
        forged = mint_token("wrong-secret-0123456789abcdef0123456789", sub=ALICE, role="service_role")
        print(psql(pg, port, query, options=f"-c rlsproxy.jwt={forged}"))
        banner("Alice's real token asking for service_role is refused (and audited as bypass.denied)")
        stolen = mint_token(SECRET, sub=ALICE, role="service_role")
        print(psql(pg, port, query, options=f"-c rlsproxy.jwt={stolen}"))

        job = mint_token(SECRET, sub="svc:nightly-sync", role="service_role")
        banner("Service job:nightly-sync bypasses RLS with a label: every note")
        print(
            psql(
                pg,
                port,
                "SELECT count(*) AS all_notes, current_user FROM notes",
                options=f"-c rlsproxy.jwt={job} -c rlsproxy.label=job:nightly-sync",
            )
        )
        banner("The same service without a label is refused")
        print(psql(pg, port, query, options=f"-c rlsproxy.jwt={job}"))
        time.sleep(0.3)  # the proxy writes bypass.end when it sees the client's Terminate
        banner(f"Audit log ({WORKDIR / 'audit.jsonl'})")
        print((WORKDIR / "audit.jsonl").read_text().rstrip())
        banner(f"Metrics (http://127.0.0.1:{http_port}/metrics), a few lines")
        print(metrics_excerpt(http_port))
        banner(f"rlsproxy doctor --dsn {pg.dsn()} --config {config}")
        doctor = subprocess.run(
            [sys.executable, "-m", "rlsproxy", "doctor", "--dsn", pg.dsn(), "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        print((doctor.stdout + doctor.stderr).rstrip())
        print(f"(exit status {doctor.returncode})")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
