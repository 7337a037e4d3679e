"""PgBouncer as the reference pooler: one process, a database alias per pool mode and login.

One process serves both pool modes (pool_mode is set per database alias), so its CPU time is read
from one pid. PgBouncer refuses to run as root; as root it runs as the cluster's system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from bench.ports import free_port, stop_process, wait_for_port
from rlsproxy.devcluster import AUTHENTICATOR_PASSWORD, PG_SYSTEM_USER, DevCluster

POOL_SIZE = 40  # as rlsproxy's pool.max_size
MAX_CLIENTS = 6000  # room for the idle-clients scenario (5,000) plus the active ones
INSTALL_HINT = "pgbouncer not installed: apt-get install pgbouncer"

# alias -> (login, pool mode). "app_*" log in as postgres like the direct target; "auth_*" as the
# authenticator, for the PostgREST-style RLS script that switches role itself.
ALIASES = {
    "app_session": ("postgres", "session"),
    "app_tx": ("postgres", "transaction"),
    "auth_session": ("authenticator", "session"),
    "auth_tx": ("authenticator", "transaction"),
}


def find_pgbouncer() -> str | None:
    # Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def pgbouncer_version(binary: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10)
    return (proc.stdout or proc.stderr).splitlines()[0].strip() if proc.returncode == 0 else "unknown"


class PgBouncerProcess:
    """A running PgBouncer in front of `pg`; stop() ends it."""

    def __init__(self, binary: str, pg: DevCluster, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.workdir = workdir
        self.log_path = workdir / "pgbouncer.log"
        ini = workdir / "pgbouncer.ini"
        ini.write_text(self._ini(pg))
        # trust still looks the user name up in auth_file; no password is checked.
        (workdir / "users.txt").write_text('"postgres" ""\n"authenticator" ""\n"bench" ""\n')
        uid, gid = self._run_as()
        if uid is not None and gid is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, uid, gid)
        self.proc = subprocess.Popen(
            [binary, str(ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            user=uid,
            group=gid,
            extra_groups=None if uid is None else [],
        )
        try:
            wait_for_port(self.host, self.port, self.proc, self.log_path, timeout_s=30)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _run_as() -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        entry = pwd.getpwnam(PG_SYSTEM_USER)  # DevCluster created it when it started as root
        return entry.pw_uid, entry.pw_gid

    def _ini(self, pg: DevCluster) -> str:
        lines = ["[databases]"]
        for alias, (user, mode) in ALIASES.items():
            password = f" password={AUTHENTICATOR_PASSWORD}" if user == "authenticator" else ""
            lines.append(
                f"{alias} = host={pg.host} port={pg.port} dbname=app user={user}{password} pool_mode={mode}"
            )
        lines += [
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"logfile = {self.log_path}",
            f"pidfile = {self.workdir / 'pgbouncer.pid'}",
            "auth_type = trust",
            f"auth_file = {self.workdir / 'users.txt'}",
            f"default_pool_size = {POOL_SIZE}",
            f"max_client_conn = {MAX_CLIENTS}",
            # Drivers send these; PgBouncer would refuse the connection otherwise.
            "ignore_startup_parameters = extra_float_digits,options",
        ]
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
