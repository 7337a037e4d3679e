"""One running proxy: the listener, the pools, metrics, the audit log, the HTTP endpoints, reload.

The per-client work lives in rlsproxy.server.ClientConnection; this is what all clients share.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlsproxy import logs
from rlsproxy.audit import AuditLog, AuditUnavailable
from rlsproxy.auth.identity import Authenticator, Identity
from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore, RemoteKeys
from rlsproxy.config import Config, ConfigError, load_config
from rlsproxy.httpd import HttpServer, is_loopback
from rlsproxy.jwks import JwksFetcher
from rlsproxy.metrics import Metrics
from rlsproxy.pool import Pool
from rlsproxy.session.guard import Guard
from rlsproxy.session.relay import Classifier
from rlsproxy.tls import server_context
from rlsproxy.wire import backend as be
from rlsproxy.wire import sqlstate
from rlsproxy.wire.startup import CancelRequest, build_cancel_request

if TYPE_CHECKING:
    from rlsproxy.doctor.base import Finding
    from rlsproxy.server import ClientConnection

log = logging.getLogger("rlsproxy")

# Sections a reload cannot change without dropping connections: they need a restart.
_RESTART_SECTIONS = ("listen", "upstream", "pool", "http", "limits")
READINESS_LOGIN_TIMEOUT_S = 1.0
# Distinct startup-settings combinations whose greeting is remembered (apps send the same few).
MAX_GREETINGS = 256
GreetingKey = tuple[str, tuple[tuple[str, str], ...]]  # (pool name, the client's startup settings)


class Greeting:
    """The ParameterStatus values a client is greeted with, and those messages built once."""

    __slots__ = ("messages", "params")

    def __init__(self, params: dict[str, str]) -> None:
        self.params = dict(params)
        self.messages = b"".join(be.parameter_status(k, v) for k, v in self.params.items())


DRAIN_POLL_S = 0.05
ADMIN_SHUTDOWN_MESSAGE = "terminating connection due to administrator command"


class LoginCheckFailed(Exception):
    """The login-role check could not log in (the text says why)."""


def login_role_posture(config: Config) -> tuple[list[Finding], list[Finding]]:
    """The doctor's login-role checks, run as upstream.user itself: (refusing, warnings).

    Refusing: every login-role-privileged finding (SUPERUSER, BYPASSRLS, INHERIT, memberships
    WITH INHERIT TRUE, tables it owns or holds privileges on) and, when upstream.service_user is set,
    a BYPASSRLS service role the login can still switch to (service-login-shared). Without a service
    login that membership is how service sessions bypass RLS, so it is only a warning. The catalog
    reads need no privilege. Raises LoginCheckFailed when the login fails.
    """
    import traceback

    import psycopg

    from rlsproxy.doctor.checks import login_context
    from rlsproxy.doctor.checks_roles import login_role_privileged, service_login_shared

    up = config.upstream
    params: dict[str, Any] = {
        "host": up.host,
        "port": up.port,
        "dbname": up.database,
        "user": up.user,
        "sslmode": up.sslmode,
        "connect_timeout": max(2, math.ceil(up.connect_timeout_s)),  # libpq: whole seconds, >= 2
        "application_name": "rlsproxy login role check",
        "options": "-c search_path=pg_catalog",
    }
    if up.password is not None:
        params["password"] = up.password
    if up.sslrootcert is not None:
        params["sslrootcert"] = up.sslrootcert
    elif up.sslmode in ("verify-ca", "verify-full"):
        params["sslrootcert"] = "system"  # as the pool does: the system's trust store
    try:
        conn = psycopg.connect(autocommit=True, **params)
    except (psycopg.Error, OSError) as exc:
        # psycopg's exception holds, through its traceback's frames and a reference cycle, the
        # half-open connection of a login that timed out: it would stay open until a garbage
        # collection. Clearing the frames closes it now; only the text goes on.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        traceback.clear_frames(exc.__traceback__)
        raise LoginCheckFailed(reason) from None
    with conn:
        ctx = login_context(conn, config)
        refusing = login_role_privileged(ctx)
        shared = service_login_shared(ctx)
    if up.service_user is not None:
        return refusing + shared, []
    return refusing, shared


def _finding_line(finding: Finding) -> str:
    fix = "; ".join(line for line in finding.fix.splitlines() if line.strip())
    return f"{finding.check}: {finding.message} Fix: {fix}"


def build_authenticator(
    config: Config, base_dir: Path | None, remote: RemoteKeys | None = None
) -> Authenticator:
    """Keys, verifier and role rules from a config; reads key files (PEM, JWKS) afresh.

    `remote` is the key set of jwt.jwks_url, kept current by a JwksFetcher.
    """
    keys = KeyStore.from_config(config.jwt, base_dir=base_dir, remote=remote)
    verifier = TokenVerifier(config.jwt, keys, cache_size=config.jwt.cache_size)
    return Authenticator(config.jwt, config.roles, config.services, verifier)


class Proxy:
    """Shared state of one running proxy."""

    def __init__(
        self,
        config: Config,
        *,
        base_dir: Path | None = None,
        config_path: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.base_dir = base_dir
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.jwks = self._jwks_fetcher(config)
        self.authenticator = build_authenticator(config, base_dir, self._remote_keys)
        # listen.tls: SSLRequest is answered 'S' and the client upgraded; the files are re-read on reload.
        self.tls_context: ssl.SSLContext | None = None
        if config.listen.tls is not None:
            self.tls_context = server_context(config.listen.tls)
        # Whether a peer address is on this machine (a token may then be asked for as a cleartext password).
        self.peer_is_local: Callable[[str], bool] = is_loopback
        # The Classifier caches verdicts by raw bytes; the Guard behind it needs no cache of its own.
        self.classifier = Classifier(Guard(0), config.limits.guard_cache_size)
        self.audit = AuditLog(config.audit, on_failure=self.metrics.audit_write_failed)
        up = config.upstream
        self.pool = self._pool("users", up.user, up.password)
        # Service sessions get their own login when configured, so the end-user login role never needs
        # membership in a BYPASSRLS role (a guard bypass would then still not reach bypass).
        self.service_pool: Pool | None = None
        if up.service_user is not None:
            self.service_pool = self._pool(
                "service", up.service_user, up.service_password, max_size=config.pool.service_max_size
            )
        self.clients: dict[int, ClientConnection] = {}  # by the pid we handed out
        # (pool name, client startup settings) -> the ParameterStatus values a server reported for
        # them: lets a client be greeted before it gets a server connection (see server.py _begin).
        self.greetings: OrderedDict[GreetingKey, Greeting] = OrderedDict()
        self.greetings_learning: dict[GreetingKey, asyncio.Future[None]] = {}  # see _learned_greeting
        self.handshakes: set[ClientConnection] = set()  # between accept and greeting (see drain)
        self.draining = (
            False  # SIGTERM: no new sessions, readiness fails, sessions end with their transaction
        )
        self.http: HttpServer | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _pool(self, name: str, user: str, password: str | None, *, max_size: int | None = None) -> Pool:
        upstream_error: Callable[[], None] = lambda: self.metrics.upstream_connect_error(name)  # noqa: E731
        cfg = self.config.pool if max_size is None else replace(self.config.pool, max_size=max_size)
        pool = Pool(name, self.config.upstream, cfg, user=user, password=password,
                    on_connect_error=upstream_error)  # fmt: skip
        self.metrics.register_pool(pool)
        return pool

    def _jwks_fetcher(self, config: Config) -> JwksFetcher | None:
        j = config.jwt
        if j.jwks_url is None:
            return None
        return JwksFetcher(
            j.jwks_url,
            RemoteKeys(j.jwks_url),
            self.metrics,
            refresh_s=j.jwks_refresh_s,
            ca_file=j.jwks_ca_file,
            on_removed=lambda: self.authenticator.clear_cache(),
        )

    @property
    def _remote_keys(self) -> RemoteKeys | None:
        return self.jwks.keys if self.jwks is not None else None

    def remember_greeting(self, key: GreetingKey, params: dict[str, str]) -> None:
        if key not in self.greetings and len(self.greetings) >= MAX_GREETINGS:
            self.greetings.popitem(last=False)
        self.greetings[key] = Greeting(params)

    def pool_for(self, identity: Identity) -> Pool:
        if identity.service is not None and self.service_pool is not None:
            return self.service_pool
        return self.pool

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the login role's posture (ConfigError if unsafe and not accepted), then listen."""
        from rlsproxy.server import ClientConnection

        problems = await self.login_role_problems(self.config)
        if problems:
            raise ConfigError(problems)
        try:
            self.audit.open()
        except AuditUnavailable as exc:
            # End-user traffic does not need the trail; bypass sessions are refused until it works.
            log.error("%s; service (bypass) sessions are refused until it can be written", exc)
        loop = asyncio.get_running_loop()
        lc = self.config.listen
        self._server = await loop.create_server(lambda: ClientConnection(self), lc.host, lc.port)
        if self.config.http.enabled:
            self.http = HttpServer(self.config.http, self.metrics, readiness=self.ready, reload=self.reload)
            await self.http.start()
        if self.jwks is not None:
            self.jwks.start()
        self.spawn(self._reaper())
        self.spawn(self._sweeper())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.config.pool.idle_timeout_s))
            self.pool.reap_idle()
            if self.service_pool is not None:
                self.service_pool.reap_idle()

    async def _sweeper(self) -> None:
        """Time out clients that connected and sent nothing, and server resets that get no answer:
        a sweep a few times per startup timeout instead of a timer per connection. A handshake
        task (started by the first bytes when the handshake has to wait) keeps the same deadline
        itself."""
        while True:
            await asyncio.sleep(min(1.0, self.config.limits.startup_timeout_s / 4))
            # A bug in one sweep must not end the sweeping: silent clients would then hold their
            # sockets for good.
            try:
                self._sweep(time.monotonic())
            except Exception:
                log.exception("bug in the sweep for startup and reset timeouts")

    def _sweep(self, now: float) -> None:
        for client in [c for c in self.handshakes if c.startup_overdue(now)]:
            client.startup_timed_out()
        for pool in (self.pool, self.service_pool):
            if pool is not None:
                pool.expire_resets(now)

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting; end each session when it is between transactions; True if all ended in time.

        /readyz fails from now on. Sessions idle between transactions are closed at once with 57P01;
        those in a transaction when it ends (ClientConnection.server_data); handshakes already under
        way are refused (57P03) or, once they are sessions, closed like the others. close() ends the rest.
        """
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout_s
        while True:
            for client in list(self.clients.values()):
                client.drain()
            if not self.clients and not any(c.in_handshake for c in list(self.handshakes)):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.http is not None:
            await self.http.close()
        for client in list(self.clients.values()):
            client.abort(sqlstate.ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE)
        for client in list(self.handshakes):
            if client.in_handshake:
                client.abort(sqlstate.ADMIN_SHUTDOWN, ADMIN_SHUTDOWN_MESSAGE)
        for pool in (self.pool, self.service_pool):
            if pool is not None:
                pool.close_all()
                self.metrics.unregister_pool(pool)
        for task in list(self._tasks):
            task.cancel()
        if self.jwks is not None:
            self.jwks.close()
        self.audit.close()

    async def login_role_problems(self, config: Config) -> list[str]:
        """Why upstream.user is unsafe (a heading, then one line per finding), or [] when it is
        not, when upstream.accept_unsafe_login_role accepts it (logged as warnings), or when the
        check cannot log in (the upstream is down: logged; clients cannot be served either)."""
        up = config.upstream
        try:
            refusing, warnings = await asyncio.to_thread(login_role_posture, config)
        except Exception as exc:  # LoginCheckFailed; a query error after login too
            reason = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("could not check the posture of login role %s (upstream.user): %s", up.user, reason)
            return []
        for finding in warnings:
            log.warning("login role %s: %s", up.user, _finding_line(finding))
        if not refusing:
            return []
        lines = [_finding_line(f) for f in refusing]
        if up.accept_unsafe_login_role:
            for line in lines:
                log.warning(
                    "UNSAFE login role %s accepted (upstream.accept_unsafe_login_role: true): %s",
                    up.user,
                    line,
                )
            return []
        return [
            f"upstream.user: the login role {up.user} is not safe to serve with (as `rlsproxy doctor` "
            "reports); fix it, or set upstream.accept_unsafe_login_role: true to accept the risk",
            *lines,
        ]

    # health and reload ---------------------------------------------------------------------------
    async def ready(self) -> tuple[bool, str]:
        """Ready when the config is loaded and Postgres accepts the proxy's login within a second."""
        if self.draining:
            return False, "shutting down"
        try:
            conn = await asyncio.wait_for(self.pool.connect_unpooled(), READINESS_LOGIN_TIMEOUT_S)
        except TimeoutError:
            return False, "upstream did not accept a login within 1s"
        except Exception as exc:
            return False, f"upstream unavailable: {getattr(exc, 'message', None) or exc}"
        conn.close()
        return True, "ok"

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file and key material; keep the old config if the new one is invalid."""
        if self.config_path is None:
            return False, "no config file to reload (the proxy was started from an in-memory config)"
        # The fetched key set carries over unless where and how it is fetched changed.
        jwks_keys = ("jwks_url", "jwks_ca_file", "jwks_refresh_s")
        same_jwks = False
        try:
            config = load_config(self.config_path)
            same_jwks = all(getattr(config.jwt, k) == getattr(self.config.jwt, k) for k in jwks_keys)
            jwks = self.jwks if same_jwks else self._jwks_fetcher(config)
            authenticator = build_authenticator(
                config, self.base_dir, jwks.keys if jwks is not None else None
            )
            # A renewed certificate is picked up here; the paths themselves need a restart (listen).
            tls = self.config.listen.tls
            tls_context = server_context(tls) if tls is not None else None
        except (ConfigError, OSError, ValueError) as exc:
            problems = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            log.error("reload rejected, the running configuration stays in force: %s", problems)
            self.metrics.config_reloaded(False)
            return False, f"reload rejected: {problems}"
        kept = [name for name in _RESTART_SECTIONS if getattr(config, name) != getattr(self.config, name)]
        if kept:
            log.warning("reload: changes to %s need a restart and were not applied", ", ".join(kept))
            config = replace(config, **{name: getattr(self.config, name) for name in kept})
        posture = await self.login_role_problems(config)
        if posture:
            log.error("reload rejected, the running configuration stays in force: %s", "; ".join(posture))
            self.metrics.config_reloaded(False)
            return False, f"reload rejected: {posture[0]}"
        if config.audit != self.config.audit:
            audit = AuditLog(config.audit, on_failure=self.metrics.audit_write_failed)
            try:
                audit.open()
            except AuditUnavailable as exc:
                log.error("%s; service (bypass) sessions are refused until it can be written", exc)
            old, self.audit = self.audit, audit
            old.close()
        old_log = self.config.log
        logs.reconfigure(config.log.level, config.log.format, was=(old_log.level, old_log.format))
        # New connections see the new identity rules; established sessions keep theirs.
        self.config = config
        self.authenticator = authenticator
        self.tls_context = tls_context
        if not same_jwks:
            if self.jwks is not None:
                self.jwks.close()
            self.jwks = jwks
            if jwks is not None:
                jwks.start()
        self.metrics.config_reloaded(True)
        note = f" (restart needed for: {', '.join(kept)})" if kept else ""
        log.info("configuration reloaded%s", note)
        return True, f"reloaded{note}"

    def reopen_audit(self) -> None:
        """SIGHUP: logrotate moved the file; continue in a fresh one."""
        try:
            self.audit.reopen()
        except AuditUnavailable as exc:
            log.error("%s; service (bypass) sessions are refused until it can be written", exc)

    def keys_ready(self, token: str | None) -> bool:
        """No JWKS fetch to wait for before `token` is verified (see await_keys)."""
        return not token or self.jwks is None or not self.authenticator.verifier.keys.wants_refresh(token)

    async def await_keys(self, token: str | None) -> None:
        """Before a token is verified: fetch jwt.jwks_url again if the token's kid is new (bounded wait)."""
        if token and self.jwks is not None:
            # Half the startup timeout at most, so the client hears why (unknown kid) rather than a timeout.
            wait_s = self.config.limits.startup_timeout_s / 2
            await self.jwks.await_for(self.authenticator.verifier.keys, token, wait_s)

    # cancel keys ---------------------------------------------------------------------------------
    def new_key(self, client: ClientConnection) -> tuple[int, bytes]:
        while True:
            # One read of the OS's CSPRNG for both halves of the key (one syscall per connection).
            raw = os.urandom(8)
            pid = (int.from_bytes(raw[:4], "big") & 0x7FFFFFFF) or 1
            if pid not in self.clients:
                self.clients[pid] = client
                return pid, raw[4:]

    async def cancel(self, request: CancelRequest) -> None:
        """Forward a cancel only to the backend of the client whose key this is."""
        client = self.clients.get(request.pid)
        if client is None or not secrets.compare_digest(client.key_secret, request.secret):
            return
        server = client.server
        if server is None or server.state is None:
            return
        up = self.config.upstream
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(up.host, up.port), up.connect_timeout_s
            )
            writer.write(build_cancel_request(server.state.pid, server.state.secret))
            await writer.drain()
            writer.close()
        except (OSError, TimeoutError):
            log.warning("could not forward a cancel request upstream")
