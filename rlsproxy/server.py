"""The asyncio edge for one client: its handshake (handshake.py reads the credentials), then the relay.

Each client connection is an asyncio.Protocol (the relay's hot path runs in data_received with no
task switch). So does the usual handshake: the whole startup packet in the first read, a token in
it, a greeting known for its settings. A handshake that must wait (for more bytes, TLS, a password,
the pool, a JWKS fetch) runs as a task. Shared state (pools, metrics, audit log) lives in
rlsproxy.proxy.Proxy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

from rlsproxy import logs
from rlsproxy.audit import AuditUnavailable
from rlsproxy.auth.identity import BypassDenied, Identity
from rlsproxy.auth.startup import ClientStartup
from rlsproxy.bypass import BypassTrail, record_denied
from rlsproxy.errors import AuthError, ProtocolViolation, ProxyError
from rlsproxy.handshake import MORE_BYTES, Cancelled, client_credentials, credentials_now
from rlsproxy.pool import ServerConnection, settings_exchange, settings_messages
from rlsproxy.proxy import Greeting, GreetingKey
from rlsproxy.session import context
from rlsproxy.session.expected import Pending
from rlsproxy.session.relay import Relay
from rlsproxy.session.server import Chunks
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.framing import FramingError
from rlsproxy.wire.startup import (
    StartupError,
)

if TYPE_CHECKING:
    from rlsproxy.proxy import Proxy

log = logging.getLogger("rlsproxy.server")
READY: Final = be.ready_for_query(codes.TX_IDLE)


class ClientConnection(asyncio.Protocol):
    """One client: startup handshake, then relaying through its Relay."""

    tls = False  # upgraded by an SSLRequest (listen.tls)
    draining = False  # the proxy is shutting down: close when the current transaction ends

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.metrics = proxy.metrics
        self.figures = proxy.metrics.figures  # what changes per transaction: field updates, compiled
        self.transport: asyncio.Transport | None = None
        self.server: ServerConnection | None = None
        self.relay: Relay | None = None
        self.identity: Identity | None = None
        self.trail: BypassTrail | None = None  # service sessions only
        self.key_pid = 0
        self.key_secret = b""
        self.bytes_in = 0
        self.bytes_out = 0
        self._statements = 0  # relay.statements already reported
        self._transactions = 0  # relay.transactions already reported
        self._tx_started = 0.0  # when the oldest unfinished transaction began (0: none)
        self.inbox = b""  # bytes received during the handshake, or before a server is attached
        self._settings: tuple[tuple[str, str], ...] = ()  # the client's startup settings
        self._greeted: dict[str, str] = {}  # the ParameterStatus values the client was greeted with
        self._attaching = False
        self._handshake_task: asyncio.Task[None] | None = None  # a handshake that has to wait
        self._startup_deadline = 0.0  # time.monotonic() by which the client must be greeted
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.peer = ""

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.figures.clients_active += 1
        # Until its handshake has to wait, the client has no handshake task: Proxy's sweep times it out.
        self._startup_deadline = time.monotonic() + self.proxy.config.limits.startup_timeout_s
        self.proxy.handshakes.add(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        relay = self.relay
        if relay is None:
            self.inbox += data
            if self._handshake_task is not None:
                if self._wakeup is not None and not self._wakeup.done():
                    self._wakeup.set_result(None)
            elif not self._closed:
                self._handshake_now()
            return
        if self.server is None:  # not attached yet (see _begin): keep it until a server is
            if not self.inbox and data == fe.TERMINATE:  # connected, greeted, left: no server needed
                self.close("terminate")
                return
            self.inbox += data
            if not self._attaching:
                self._attaching = True
                server = self._idle_server()
                if server is not None:
                    self._attached(server)  # no task: a connection was waiting in the pool
                else:
                    self.proxy.spawn(self._attach_later())
            return
        to_server: Chunks = []
        to_client: Chunks = []
        try:
            relay.feed_client(data, to_server, to_client)
        except ProtocolViolation as violation:  # a header Postgres refuses (wrong type or length)
            self._client_broke_protocol(violation.message)
            return
        except fe.MalformedMessage as malformed:  # a body without its type's layout
            self._client_broke_protocol(str(malformed))
            return
        except ProxyError as exc:
            self.abort(exc.sqlstate, exc.message, hint=exc.hint)
            return
        except Exception:
            log.exception("bug while relaying client data")
            self.abort(sqlstate.INTERNAL_ERROR, "rlsproxy internal error")
            return
        server = self.server
        if to_server and server is not None:
            server.write(to_server)
        if to_client:
            self._write(to_client)
        if relay.statements != self._statements:
            self.figures.statements += relay.statements - self._statements
            self._statements = relay.statements
        if relay.transactions != self._transactions and not self._tx_started:
            self._tx_started = time.monotonic()
        if relay.terminated:
            self.close("terminate")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)  # a handshake task sees the client gone
        elif self._handshake_task is None and self.in_handshake:
            self._handshake_ended(ConnectionError("client went away"))  # counted as a task's would be
        self.close("disconnect")

    def pause_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.resume_reading()

    # ServerListener ---------------------------------------------------------------------------
    def server_data(self, data: bytes) -> None:
        relay = self.relay
        assert relay is not None
        to_client: Chunks = []
        to_server: Chunks = []
        try:
            relay.feed_server(data, to_client, to_server)
        except ProxyError as exc:
            # The server reported a state the proxy cannot vouch for (session/server.check_reported).
            log.error("closing the session: %s", exc.message)
            self._drop_server()
            self.abort(exc.sqlstate, exc.message, hint=exc.hint)
            return
        except FramingError as exc:
            log.error("upstream protocol error: %s", exc)
            self._drop_server()
            self.abort(sqlstate.CONNECTION_FAILURE, "rlsproxy: lost sync with the upstream server")
            return
        if to_client:
            self._write(to_client)
        if to_server and self.server is not None:
            self.server.write(to_server)
        if self._tx_started:
            state = relay.server
            if state is not None and state.idle:
                self._transactions_done(relay.transactions)
        if self.draining:
            state = relay.server
            if state is not None and state.idle:
                self.abort(sqlstate.ADMIN_SHUTDOWN, "terminating connection due to administrator command")

    def _transactions_done(self, total: int) -> None:
        """Every transaction begun so far has ended: count them, and time them as one (pipelines)."""
        self.figures.transactions_finished(total - self._transactions, time.monotonic() - self._tx_started)
        self._transactions = total
        self._tx_started = 0.0

    def server_lost(self) -> None:
        if not self._closed:
            self.abort(sqlstate.CONNECTION_FAILURE, "rlsproxy: the upstream server closed the connection")

    def server_paused(self, paused: bool) -> None:
        if self.transport is not None:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # output -----------------------------------------------------------------------------------
    def _write(self, chunks: Sequence[bytes | memoryview]) -> None:
        if self.transport is not None and not self._closed:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.bytes_out += len(data)
            self.transport.write(data)  # one buffer, one send

    def _drop_server(self) -> None:
        """Close the server connection for good: its state is not what the proxy believes."""
        if self.server is not None:
            self.server.close()

    def _client_broke_protocol(self, why: str) -> None:
        """Bad client input, not a proxy fault: FATAL 08P01 and close, as Postgres answers a message
        it cannot read. The server connection goes too: what of the client's bytes reached it (the
        start of a message passed on as it came, messages before it) is not known for sure."""
        log.warning("closing a client that broke the protocol: %s", why, extra={"peer": self.peer})
        self._drop_server()
        self.abort(sqlstate.PROTOCOL_VIOLATION, why)

    def abort(self, code: str, message: str, *, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close."""
        if self.transport is not None and not self._closed:
            self.transport.write(be.error_response(code, message, severity="FATAL", hint=hint))
        self.close(f"error {code}")

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        figures = self.figures
        figures.clients_active -= 1
        figures.bytes_received += self.bytes_in
        figures.bytes_sent += self.bytes_out
        self.proxy.clients.pop(self.key_pid, None)
        self.proxy.handshakes.discard(self)
        if self.trail is not None:
            try:
                self.trail.end(bytes_in=self.bytes_in, bytes_out=self.bytes_out, reason=reason)
            except AuditUnavailable as exc:
                log.error("could not write bypass.end: %s", exc)
        server, self.server = self.server, None
        relay, self.relay = self.relay, None
        if server is not None:
            reusable = not server.closed and (relay is None or not relay.busy)
            if relay is not None:
                relay.detach()
            pool = self.proxy.pool_for(self.identity) if self.identity is not None else self.proxy.pool
            pool.release(server, reusable=reusable)

    # handshake --------------------------------------------------------------------------------
    async def read_at_least(self, need: int) -> None:
        """Wait until the handshake's buffer (inbox) holds `need` bytes."""
        while len(self.inbox) < need:
            if self._closed:
                raise ConnectionError("client went away")
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def _handshake_now(self) -> None:
        """The client's first bytes: finish the handshake here when nothing needs a wait, else start
        the task. No task, timeout and wakeup per connection: about 5 µs of each one's CPU."""
        try:
            ready = credentials_now(self)
            if ready == MORE_BYTES:
                return
            if isinstance(ready, str):  # TLS, a cancel request, a password prompt, a JWKS fetch
                self._handshake_task = self.proxy.spawn(self._handshake())
                return
            client, token = ready
            identity = self._authenticate(token, client.label)
            greeting = self.proxy.greetings.get((self.proxy.pool_for(identity).name, client.settings))
            if greeting is None:  # the first client with these settings: a server tells the greeting
                self._handshake_task = self.proxy.spawn(self._handshake((client, identity)))
                return
            self._greet(client, identity, greeting)
        except Exception as failure:  # classified by _refused, as the task's are
            self._handshake_ended(failure)
            return
        self._handshake_ended(None)

    async def _handshake(self, known: tuple[ClientStartup, Identity] | None = None) -> None:
        """The handshake that has to wait: from the startup packet, or from a known identity."""
        try:
            if known is None:
                # asyncio.timeout, not wait_for: no extra task per step of the startup. One deadline,
                # from the connection's start, for the startup packet and the credentials (a password
                # prompt included).
                async with asyncio.timeout(max(0.0, self._startup_deadline - time.monotonic())):
                    client, token = await client_credentials(self)
                identity = self._authenticate(token, client.label)
            else:
                client, identity = known
            await self._begin(client, identity)
        except BaseException as failure:  # classified by _refused; cancellation goes on
            self._handshake_ended(failure)
            if not isinstance(failure, Exception):
                raise
            return
        self._handshake_ended(None)

    def startup_overdue(self, now: float) -> bool:
        """Past the startup timeout with no handshake task (which has its own): nothing sent, or
        not a whole startup packet."""
        return self._handshake_task is None and self.in_handshake and now >= self._startup_deadline

    def startup_timed_out(self) -> None:
        self._handshake_ended(TimeoutError())

    def _handshake_ended(self, failure: BaseException | None) -> None:
        """Count and log how the startup ended (refusing the client if it failed)."""
        self.proxy.handshakes.discard(self)
        outcome, why = ("ok", "") if failure is None else self._refused(failure)
        if outcome is not None:
            self.metrics.connection_outcome(outcome)
            if outcome != "ok":  # the successful ones are logged by _greet, with the identity
                log.info("client refused", extra={"peer": self.peer, "outcome": outcome, "reason": why})

    def _refused(self, failure: BaseException) -> tuple[str | None, str]:
        """End a failed startup: the outcome to count (None: not a client session) and why."""
        if isinstance(failure, Cancelled):
            self.close("cancel")
            return None, ""  # a cancel request is not a client session
        if isinstance(failure, TimeoutError):
            self.abort(sqlstate.PROTOCOL_VIOLATION, "rlsproxy: startup timed out")
            return "refused", "startup timed out"
        if isinstance(failure, (StartupError, FramingError)):
            why = f"invalid startup packet: {failure}"
            self.abort(sqlstate.PROTOCOL_VIOLATION, why)
            return "refused", why
        if isinstance(failure, AuthError):
            self.metrics.auth_failed(failure.reason)
            self.abort(failure.sqlstate, failure.message, hint=failure.hint)
            return "auth_failed", failure.message  # messages never carry the token
        if isinstance(failure, ProxyError):
            self.abort(failure.sqlstate, failure.message, hint=failure.hint)
            # Upstream trouble (08, 53, 57 classes) is an error; anything else is a refusal of the client.
            upstream = failure.sqlstate[:2] in ("08", "53", "57", "XX")
            return ("error" if upstream else "refused"), failure.message
        if isinstance(failure, ConnectionError):
            self.close("disconnect")
            # Connected and left without a byte: a port probe, not a client.
            return ("error" if self.bytes_in else None), "client went away"
        if isinstance(failure, Exception):
            log.error("bug during client startup", exc_info=failure)
            self.abort(sqlstate.INTERNAL_ERROR, "rlsproxy internal error during startup")
            return "error", "internal error"
        return "error", "client went away"  # cancelled: the proxy is closing

    def drain(self) -> None:
        """Shutting down: close now if between transactions, else when the transaction ends (server_data)."""
        if self.draining or self._closed or self.relay is None:
            return  # a handshake still running is looked at again when it is done
        state = self.relay.server
        if state is None or state.idle:  # not attached yet, or between transactions
            self.abort(sqlstate.ADMIN_SHUTDOWN, "terminating connection due to administrator command")
        else:
            self.draining = True

    @property
    def in_handshake(self) -> bool:
        return not self._closed and self.relay is None

    def _authenticate(self, token: str | None, label: str | None) -> Identity:
        proxy = self.proxy
        verifier = proxy.authenticator.verifier
        misses = verifier.cache_misses
        started = time.perf_counter()
        try:
            identity = proxy.authenticator.authenticate(token, label=label)
        except BypassDenied as exc:
            record_denied(
                proxy.audit, self.metrics, exc, client=self.peer, database=proxy.config.upstream.database
            )
            raise
        finally:
            if token is not None:
                self.metrics.jwt_verified(
                    time.perf_counter() - started, cache_hit=verifier.cache_misses == misses
                )
        return identity

    def _start_trail(self, identity: Identity) -> None:
        """A service session: its audit trail must be writable, or the session is refused (fail closed)."""
        proxy = self.proxy
        trail = BypassTrail(
            proxy.audit,
            self.metrics,
            identity,
            session=self.key_pid,
            client=self.peer,
            database=proxy.config.upstream.database,
        )
        try:
            proxy.audit.ensure_open()
            trail.start()
        except AuditUnavailable as exc:
            self.metrics.bypass_refused("bypass_audit_unavailable")
            log.error("service session refused: %s", exc)
            raise AuthError(
                "bypass_audit_unavailable",
                "service sessions are refused: the audit log cannot be written",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            ) from None
        self.trail = trail

    async def _begin(self, client: ClientStartup, identity: Identity) -> None:
        # The server connection is attached when the client first sends something, so idle clients
        # hold none (as PgBouncer does). The greeting's ParameterStatus values are those a server
        # reported for the same startup settings; the first client with new settings attaches now.
        key = (self.proxy.pool_for(identity).name, client.settings)
        greeting = self.proxy.greetings.get(key) or await self._learned_greeting(key)
        if greeting is None:
            self.identity = identity  # _attach_server reads both (_greet sets them for every client)
            self._settings = client.settings
            await self._learn_greeting(key)
            assert self.server is not None and self.server.state is not None
            greeting = Greeting(self.server.state.params)
        self._greet(client, identity, greeting)

    def _greet(self, client: ClientStartup, identity: Identity, greeting: Greeting) -> None:
        """Authenticated: the client's session begins (a server attaches when it first sends)."""
        proxy = self.proxy
        self.identity = identity
        self._settings = client.settings
        assert self.transport is not None
        self._greeted = greeting.params
        self.key_pid, self.key_secret = proxy.new_key(self)
        if identity.service is not None:
            self._start_trail(identity)
        relay = Relay(
            context.context_prefix(identity.role, identity.claims_json),
            proxy.classifier,
            max_message=proxy.config.limits.max_message_bytes,
            on_refusal=self.metrics.refusal,
            on_statement=self._audit_statement if self.trail is not None else None,
            restore=settings_messages(client.settings),
            # Service sessions keep the identity they were audited under: no in-band switching.
            in_band=self._in_band_check if proxy.config.jwt.in_band and self.trail is None else None,
        )
        self.relay = relay
        if self.server is not None and self.server.state is not None:
            relay.attach(self.server.state)
            self.server.listener = self
        self._write(
            [
                be.AUTHENTICATION_OK,
                greeting.messages,
                be.backend_key_data(self.key_pid, self.key_secret),
                READY,
            ]
        )
        if proxy.config.log.connections:
            fields = {"peer": self.peer, "role": identity.role, "anonymous": identity.anonymous}
            logs.info_line(log, "client connected", fields)
        if self.inbox:
            pending, self.inbox = self.inbox, b""
            self.bytes_in -= len(pending)  # counted when it arrived
            self.data_received(pending)

    async def _learned_greeting(self, key: GreetingKey) -> Greeting | None:
        """Wait while another client learns the greeting for these settings; None: learn it here.

        Without this, every client arriving before the first one's server answered would attach
        (and, idle, keep) a server connection of its own: a burst of new clients could pin the pool.
        """
        proxy = self.proxy
        while (learning := proxy.greetings_learning.get(key)) is not None:
            await learning
            if (greeting := proxy.greetings.get(key)) is not None:
                return greeting
        return None  # nobody is learning it (or the one who was failed): this client learns it

    async def _learn_greeting(self, key: GreetingKey) -> None:
        proxy = self.proxy
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proxy.greetings_learning[key] = done
        try:
            await self._attach_server()
        finally:
            if proxy.greetings_learning.get(key) is done:
                del proxy.greetings_learning[key]
            done.set_result(None)

    async def _attach_server(self, *, settings_known_good: bool = False) -> None:
        """Acquire a server connection for this session and give it the client's startup settings.

        Settings already accepted by a server for an earlier client (the greeting was remembered)
        are pipelined ahead of the client's first messages instead of costing a round trip.
        """
        assert self.identity is not None
        proxy = self.proxy
        pool = proxy.pool_for(self.identity)
        waited = time.perf_counter()
        server = await pool.acquire(self._settings, known_good=settings_known_good)
        self.metrics.pool_acquired(pool.name, time.perf_counter() - waited)
        if self._closed:  # the client left while we waited for the pool
            pool.release(server, reusable=True)
            raise ConnectionError("client went away")
        self.server = server
        if settings_known_good:
            self._pipeline_settings(server)
            return
        errors = await server.apply_settings(self._settings)
        if self._closed:  # the client left meanwhile; close() already gave the connection back
            raise ConnectionError("client went away")
        if errors:
            first = errors[0]
            raise ProxyError(first.get("M", "invalid setting"), code=first.get("C"), fatal=True)
        assert server.state is not None
        proxy.remember_greeting((pool.name, self._settings), server.state.params)

    def _pipeline_settings(self, server: ServerConnection) -> None:
        """Settings a server accepted before go ahead of the client's first messages, in one send."""
        messages = settings_exchange(server.baseline, self._settings)
        if messages and server.state is not None:
            server.hold(server.state.internal(messages, self._settings_applied))

    def _settings_applied(self, entry: Pending) -> None:
        """A pipelined settings exchange is done; the server refusing settings it took before is a fault."""
        if entry.errors:
            first = entry.errors[0]
            self.abort(first.get("C", sqlstate.INTERNAL_ERROR), first.get("M", "invalid setting"))

    def _idle_server(self) -> ServerConnection | None:
        assert self.identity is not None
        pool = self.proxy.pool_for(self.identity)
        server = pool.try_acquire(self._settings, known_good=True)
        if server is not None:
            self.metrics.pool_acquired(pool.name, 0.0)
            self.server = server
            self._pipeline_settings(server)
        return server

    async def _attach_later(self) -> None:
        """The client's first message after an idle greeting, and no idle server: wait for one."""
        transport = self.transport
        assert transport is not None and self.relay is not None
        transport.pause_reading()  # nothing more to buffer until the session can relay it
        try:
            await self._attach_server(settings_known_good=True)
        except ProxyError as exc:
            self.abort(exc.sqlstate, exc.message, hint=exc.hint)
            return
        except ConnectionError:
            return
        except Exception:
            log.exception("bug while attaching a server connection")
            self.abort(sqlstate.INTERNAL_ERROR, "rlsproxy internal error")
            return
        transport.resume_reading()
        if self.server is not None:
            self._attached(self.server)

    def _attached(self, server: ServerConnection) -> None:
        """A server is ours (its settings pipelined): tell the client what changed, relay what came."""
        relay = self.relay
        if self._closed or server.state is None or relay is None:
            return
        # Values the greeting could not know (a server restarted with another version, say).
        params = server.state.params
        if params != self._greeted:  # usually equal: the greeting came from such a server
            own = {name.lower() for name, _ in self._settings}  # reported after the pipelined settings
            changed = [
                be.parameter_status(k, v)
                for k, v in params.items()
                if self._greeted.get(k) != v and k.lower() not in own
            ]
            if changed:
                self._write(changed)
        relay.attach(server.state)
        server.listener = self
        pending, self.inbox = self.inbox, b""
        self.bytes_in -= len(pending)  # counted when it arrived
        self.data_received(pending)

    def _in_band_check(self, token: str) -> tuple[str, str]:
        """The relay's in-band switch: verify `token` ("" = back to the startup identity).

        Errors are statement errors (the session goes on): 28000 for a bad token, 42501 for a
        service identity, which may bypass RLS only from startup, with its label and audit trail.
        """
        startup = self.identity
        assert startup is not None
        if not token:
            self.metrics.in_band_switch("ok")
            return startup.role, startup.claims_json
        try:
            identity = self._authenticate(token, None)
        except BypassDenied as exc:
            self.metrics.in_band_switch(exc.reason)
            if exc.service is not None:
                raise ProxyError(
                    f"rlsproxy: {exc.message}; services connect with their label (rlsproxy.label) at "
                    "startup, never in-band",
                    code=sqlstate.INSUFFICIENT_PRIVILEGE,
                ) from None
            raise ProxyError(f"rlsproxy: {exc.message}", code=exc.sqlstate) from None
        except AuthError as bad:
            self.metrics.in_band_switch(bad.reason)
            raise ProxyError(f"rlsproxy: {bad.message}", code=bad.sqlstate, hint=bad.hint) from None
        self.metrics.in_band_switch("ok")
        return identity.role, identity.claims_json

    def _audit_statement(self, sql: bytes) -> None:
        """Before a service session's statement goes upstream; no trail, no statement (fail closed)."""
        assert self.trail is not None
        try:
            self.trail.statement(sql)
        except AuditUnavailable as exc:
            log.error("ending a service session: %s", exc)
            raise ProxyError(
                "rlsproxy: the audit log cannot be written; service session ended",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                fatal=True,
            ) from None
