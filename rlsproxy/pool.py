"""Upstream connections: login, pooling, reset on release. asyncio only; never parses client SQL.

A server connection is attached to at most one client at a time (session pooling). It goes back
to the pool only after a clean reset (ROLLBACK when a transaction is open, then DISCARD ALL);
one that is busy, broken or fails its reset is closed instead, so no state crosses clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from rlsproxy.config import PoolConfig, UpstreamConfig
from rlsproxy.errors import PoolTimeout, ProxyError, UpstreamUnavailable
from rlsproxy.session.expected import CTX_UNPREPARED, Pending
from rlsproxy.session.server import Chunks, ServerState, UpstreamLogin
from rlsproxy.tls import upstream_context
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.startup import build_ssl_request

log = logging.getLogger("rlsproxy.pool")

UPSTREAM_PARAMS = {"application_name": "rlsproxy", "client_encoding": "UTF8"}
ROLLBACK = fe.query("ROLLBACK")
DISCARD_ALL = fe.query("DISCARD ALL")
RESET_TIMEOUT_S = 10.0  # a released connection whose reset does not answer within this is closed
SET_CONFIG_SQL = "SELECT set_config($1, $2, false)"


class ServerListener(Protocol):
    """The client side a server connection relays to while attached."""

    def server_data(self, data: bytes) -> None: ...
    def server_lost(self) -> None: ...
    def server_paused(self, paused: bool) -> None: ...


Settings = tuple[tuple[str, str], ...]  # a client's startup settings, (name, value) in its order


def serves_without_leak(baseline: Settings, settings: Settings) -> bool:
    """A session started with `baseline` can take on `settings`: they set every name it started with.

    Anything else would leave the other client's value (a search_path, a time zone) in place.
    """
    names = {name for name, _ in settings}
    return all(name in names for name, _ in baseline)


class ServerConnection(asyncio.Protocol):
    """One upstream connection: its transport, its protocol state, its current listener."""

    def __init__(self, login: UpstreamLogin, baseline: Settings = ()) -> None:
        # The client settings in its startup packet (PgBouncer's way): RESET ALL, and so the reset
        # at release, brings the session back to them, and a client with the same settings needs
        # no exchange of its own.
        self.baseline = baseline
        self._login: UpstreamLogin | None = login
        self.transport: asyncio.Transport | None = None
        self.state: ServerState | None = None
        self.listener: ServerListener | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self.held = b""
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        assert self._login is not None
        self.transport.write(self._login.start())

    def data_received(self, data: bytes) -> None:
        if self.listener is not None:
            self.listener.server_data(data)
        elif self._login is not None:
            self._login_data(data)
        elif self.state is not None:
            # Replies to the pool's own exchanges (settings, reset): nothing goes to a client.
            to_server: Chunks = []
            try:
                self.state.receive(data, [], to_server)
            except Exception:
                log.exception("upstream protocol error while idle")
                self.close()
                return
            self.write(to_server)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._ready.done():
            self._ready.set_exception(UpstreamUnavailable("upstream closed the connection during login"))
        if self.listener is not None:
            self.listener.server_lost()
        elif self.state is not None:
            self.state.lost()  # a reset or settings exchange in flight ends now, not at its timeout

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.server_paused(True)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.server_paused(False)

    # login ------------------------------------------------------------------------------------
    def _login_data(self, data: bytes) -> None:
        login = self._login
        assert login is not None
        try:
            reply = login.receive(data)
        except ProxyError as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            self.close()
            return
        if reply:
            self.write([reply])
        if login.done:
            self.state = login.server_state()
            self._login = None
            if not self._ready.done():
                self._ready.set_result(None)

    async def ready(self) -> None:
        await self._ready

    # helpers ----------------------------------------------------------------------------------
    def write(self, chunks: Sequence[bytes | memoryview]) -> None:
        if self.held:  # see hold()
            chunks = [self.held, *chunks]
            self.held = b""
        if self.transport is not None and not self.closed and chunks:
            # One buffer, one send: several small writes may each reach the socket (and wake Postgres).
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def hold(self, messages: bytes) -> None:
        """Send `messages` ahead of the next write (one send where there would be two)."""
        self.held += messages

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(fe.TERMINATE)
            self.transport.close()

    async def exchange(self, messages: bytes, timeout: float = 10.0) -> Pending:
        """Run one exchange of the proxy's own (ending with Sync or Query) and wait for its end."""
        assert self.state is not None
        done: asyncio.Future[Pending] = asyncio.get_running_loop().create_future()

        def finish(entry: Pending) -> None:
            if not done.done():
                done.set_result(entry)

        self.write([self.state.internal(messages, finish)])
        return await asyncio.wait_for(done, timeout)

    async def apply_settings(self, settings: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
        """Set the client's startup settings at session level; values travel as bind parameters."""
        messages = settings_exchange(self.baseline, settings)
        if not messages:
            return []
        entry = await self.exchange(messages)
        return entry.errors


class _SslNegotiation(asyncio.Protocol):
    """Sends SSLRequest on a fresh upstream connection and waits for the one-byte answer."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(build_ssl_request())

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError("upstream closed the connection after SSLRequest"))


def settings_exchange(baseline: Settings, settings: Settings) -> bytes:
    """What gives a session started with `baseline` the client's settings: nothing when they are
    its startup settings (RESET ALL keeps them, too), else the exchange."""
    return b"" if baseline == settings else settings_messages(settings)


@functools.lru_cache(maxsize=1024)  # clients of one app send the same few settings on every connect
def settings_messages(settings: tuple[tuple[str, str], ...]) -> bytes:
    """One exchange (ending with Sync) that sets each (name, value) at session level, or b"" for none."""
    body = b"".join(
        fe.parse("", SET_CONFIG_SQL) + fe.bind("", (name, value)) + fe.execute() for name, value in settings
    )
    return body + fe.SYNC if body else b""


class Pool:
    """A bounded set of logged-in upstream connections for one login role."""

    def __init__(
        self,
        name: str,
        upstream: UpstreamConfig,
        cfg: PoolConfig,
        *,
        user: str,
        password: str | None,
        on_connect_error: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._upstream = upstream
        self._cfg = cfg
        self._user = user
        self._password = password
        self._idle: deque[ServerConnection] = deque()
        self._in_use: set[ServerConnection] = set()
        # Released connections being reset still count against max_size: otherwise a client arriving
        # during the reset would open a new connection instead of waiting a moment for this one
        # (with room in the pool, acquire waits for one started with the client's settings).
        self._resetting: dict[ServerConnection, float] = {}  # -> time.monotonic() deadline of its reset
        # Clients waiting for the reset of a connection started with their settings (see acquire).
        self._reset_waits: dict[ServerConnection, asyncio.Future[None]] = {}
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_connect_error = on_connect_error
        self._ssl = upstream_context(upstream)  # None: sslmode disable
        self.closing = False

    # figures for metrics
    @property
    def size(self) -> int:
        return len(self._idle) + len(self._in_use) + len(self._resetting) + self._connecting

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def in_use_count(self) -> int:
        return len(self._in_use)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, settings: Settings = (), *, known_good: bool = False) -> ServerConnection | None:
        """An idle connection for a client with these startup settings, or None (acquire() waits or
        connects).

        Best is one started with the same settings (nothing to set). With `known_good` (a server
        accepted these settings before) and room in the pool, None instead of any other, so that a
        new connection starts with them: the pool converges to what its clients use. Otherwise one
        whose startup settings the client's all override (its own are set in an exchange). When
        only connections that would leak a setting are idle and the pool is full, the oldest is
        closed to make room.
        """
        idle = self._idle
        while idle and idle[-1].closed:
            idle.pop()
        if not idle:
            return None
        if idle[-1].baseline == settings:  # the usual case: one app, one set of settings
            conn = idle.pop()
        else:
            other = self._take_other(settings, room=known_good and self.size < self._cfg.max_size)
            if other is None:
                return None
            conn = other
        self._in_use.add(conn)
        return conn

    def _take_other(self, settings: Settings, *, room: bool) -> ServerConnection | None:
        usable: ServerConnection | None = None
        for conn in reversed(self._idle):
            if conn.closed:
                continue
            if conn.baseline == settings:
                usable = conn
                break
            if usable is None and not room and serves_without_leak(conn.baseline, settings):
                usable = conn
        if usable is not None:
            self._idle.remove(usable)
            return usable
        if not room and self._idle and self.size >= self._cfg.max_size:
            self._idle.popleft().close()  # would leak its settings to this client: make room
        return None

    async def acquire(self, settings: Settings = (), *, known_good: bool = False) -> ServerConnection:
        """A connection for a client with these settings (`known_good`: a server accepted them).

        When none is idle but one started with the same settings is being reset (its client just
        left: a round trip), the client waits for that one rather than opening another, even with
        room in the pool: a client that reconnects gets the connection it left, and the pool does
        not grow with each race against a reset. If the reset fails, or has not ended by the
        acquire deadline, the client opens a new connection when there is room.
        """
        deadline = time.monotonic() + self._cfg.acquire_timeout_ms / 1000
        patient = True
        while True:
            idle = self.try_acquire(settings, known_good=known_good)
            if idle is not None:
                return idle
            if patient:
                resetting = self._resetting_with(settings)
                if resetting is not None:
                    patient = await self._reset_ended(resetting, deadline)
                    continue
            if self.size < self._cfg.max_size:
                self._connecting += 1
                try:
                    conn = await self._connect(settings if known_good else ())
                finally:
                    self._connecting -= 1
                self._in_use.add(conn)
                return conn
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise self._timeout() from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _resetting_with(self, settings: Settings) -> ServerConnection | None:
        for conn in self._resetting:
            if conn.baseline == settings and not conn.closed:
                return conn
        return None

    async def _reset_ended(self, conn: ServerConnection, deadline: float) -> bool:
        """Wait until `conn`'s reset ends (idle, or closed); False when `deadline` comes first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ended = self._reset_waits.get(conn)
        if ended is None:
            ended = asyncio.get_running_loop().create_future()
            self._reset_waits[conn] = ended
        try:
            # shield: one client's timeout must not cancel what the others wait for.
            await asyncio.wait_for(asyncio.shield(ended), remaining)
        except TimeoutError:
            return False
        return True

    def _timeout(self) -> PoolTimeout:
        return PoolTimeout(
            f"rlsproxy: no upstream connection available within {self._cfg.acquire_timeout_ms} ms "
            f"(pool {self.name!r} has {self._cfg.max_size} connections, all in use)",
            hint="raise pool.max_size (within Postgres' max_connections) or pool.acquire_timeout_ms",
        )

    async def connect_unpooled(self) -> ServerConnection:
        """A fresh login outside the pool's accounting (readiness probes); the caller closes it."""
        return await self._connect()

    async def _connect_once(self, baseline: Settings) -> ServerConnection:
        params = {**UPSTREAM_PARAMS, **dict(baseline)}
        login = UpstreamLogin(self._user, self._password, self._upstream.database, params)
        conn: ServerConnection | None = None
        try:
            conn = await asyncio.wait_for(self._open(login, baseline), self._upstream.connect_timeout_s)
            await asyncio.wait_for(conn.ready(), self._upstream.connect_timeout_s)
        except BaseException:
            # A login that failed or took too long (or whose waiter was cancelled) is closed, never
            # left to finish later outside the pool's accounting.
            if conn is not None:
                conn.close()
            raise
        return conn

    async def _connect(self, baseline: Settings = ()) -> ServerConnection:
        """A logged-in connection, or UpstreamUnavailable saying what went wrong."""
        try:
            return await self._connect_once(baseline)
        except ProxyError:
            self._connect_failed()
            raise
        except ssl.SSLError as exc:  # before OSError, which it is
            self._connect_failed()
            reason = exc.reason or str(exc)
            if isinstance(exc, ssl.SSLCertVerificationError):
                reason = f"certificate verify failed: {exc.verify_message}"
            raise UpstreamUnavailable(
                f"rlsproxy: TLS with upstream PostgreSQL at {self._hostport} failed: {reason} "
                f"(upstream.sslmode is {self._upstream.sslmode})",
                code=sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            ) from exc
        except (OSError, TimeoutError) as down:
            self._connect_failed()
            limit = self._upstream.connect_timeout_s
            why = str(down) or f"no login within {limit:g} s (upstream.connect_timeout_s)"
            raise UpstreamUnavailable(
                f"rlsproxy: cannot connect to upstream PostgreSQL at {self._hostport}: {why}",
                code=sqlstate.CANNOT_CONNECT_NOW,
            ) from down

    @property
    def _hostport(self) -> str:
        return f"{self._upstream.host}:{self._upstream.port}"

    async def _open(self, login: UpstreamLogin, baseline: Settings) -> ServerConnection:
        """A connected ServerConnection that has sent its startup message, over TLS as sslmode says.

        Like libpq: SSLRequest first; 'S' starts TLS, 'N' carries on in plaintext for prefer and
        fails for require and verify-*.
        """
        loop = asyncio.get_running_loop()
        up = self._upstream
        if self._ssl is None:
            _, conn = await loop.create_connection(
                lambda: ServerConnection(login, baseline), up.host, up.port
            )
            return conn
        transport, negotiation = await loop.create_connection(_SslNegotiation, up.host, up.port)
        try:
            answer = await negotiation.answer
            conn = ServerConnection(login, baseline)
            if answer == b"S":
                # server_hostname is sent as SNI; it is checked only for verify-full (check_hostname).
                upgraded = await loop.start_tls(transport, conn, self._ssl, server_hostname=up.host)
                if upgraded is None:
                    raise ConnectionResetError("upstream closed the connection during the TLS handshake")
                conn.connection_made(upgraded)
                return conn
            if answer == b"N" and up.sslmode == "prefer":
                transport.set_protocol(conn)
                conn.connection_made(transport)
                return conn
        except BaseException:
            transport.close()
            raise
        transport.close()
        if answer == b"N":
            reason = "the server does not support SSL"
        elif answer[:1] == b"S":
            reason = "received unencrypted data after the SSL response"
        else:
            reason = f"unexpected answer to SSLRequest ({answer[:16]!r})"
        raise UpstreamUnavailable(
            f"rlsproxy: upstream PostgreSQL at {self._hostport}: {reason}, "
            f"but upstream.sslmode is {up.sslmode}",
            code=sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        )

    def _connect_failed(self) -> None:
        if self._on_connect_error is not None:
            self._on_connect_error()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, conn: ServerConnection, *, reusable: bool) -> None:
        """Give a connection back: reset it and put it back in the pool, or close it.

        The reset (ROLLBACK when a transaction is open, then DISCARD ALL) is written now and ends
        in _reset_done when its last ReadyForQuery arrives: no task per released connection.
        """
        self._in_use.discard(conn)
        conn.listener = None
        state = conn.state
        if not reusable or self.closing or conn.closed or state is None or state.pending:
            conn.close()
            self._wake()
            return
        # No timer per release: Proxy's sweep calls expire_resets() about every second.
        self._resetting[conn] = time.monotonic() + RESET_TIMEOUT_S
        errors: list[dict[str, str]] = []
        messages = []
        if state.tx_status != codes.TX_IDLE:
            messages.append(state.internal(ROLLBACK, lambda entry: errors.extend(entry.errors)))
        messages.append(state.internal(DISCARD_ALL, lambda entry: self._reset_done(conn, entry, errors)))
        conn.write(messages)

    def expire_resets(self, now: float) -> None:
        """Close the connections whose reset has not answered by its deadline."""
        for conn in [c for c, deadline in self._resetting.items() if deadline <= now]:
            self._reset_done(conn, None, [])

    def _reset_done(
        self, conn: ServerConnection, entry: Pending | None, errors: list[dict[str, str]]
    ) -> None:
        """The reset's end (`entry`), or its timeout (None): only a clean reset makes it reusable."""
        if self._resetting.pop(conn, None) is None:
            return  # already ended (a reply after the timeout)
        ended = self._reset_waits.pop(conn, None)
        if ended is not None and not ended.done():
            ended.set_result(None)  # its waiters try again once this returns (idle, or closed)
        state = conn.state
        clean = (
            entry is not None
            and not errors
            and not entry.errors
            and not conn.closed
            and state is not None
            and not state.pending
            and state.tx_status == codes.TX_IDLE
        )
        if clean and not self.closing and state is not None:
            state.forget_context(CTX_UNPREPARED)
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._wake()

    def reap_idle(self) -> None:
        """Close connections idle for longer than pool.idle_timeout_s (and dead ones)."""
        cutoff = time.monotonic() - self._cfg.idle_timeout_s
        keep: deque[ServerConnection] = deque()
        for conn in self._idle:
            if conn.closed or conn.idle_since < cutoff:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close_all(self) -> None:
        self.closing = True
        for conn in list(self._idle) + list(self._in_use) + list(self._resetting):
            conn.close()
        for ended in self._reset_waits.values():
            if not ended.done():
                ended.set_result(None)
        self._reset_waits.clear()
        self._idle.clear()
