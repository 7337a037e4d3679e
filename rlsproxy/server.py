"""The asyncio edge: the client listener, the startup handshake, and the relay between transports.

Each client connection is an asyncio.Protocol (the relay's hot path runs in data_received with no
task switch); only the handshake, which waits on the pool, runs as a task.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import Any, cast

from rlsproxy.auth.identity import Authenticator, Identity
from rlsproxy.auth.startup import ClientStartup, read_startup
from rlsproxy.config import Config
from rlsproxy.errors import ProtocolViolation, ProxyError
from rlsproxy.pool import Pool, ServerConnection
from rlsproxy.session import context
from rlsproxy.session.relay import Classifier, Relay
from rlsproxy.session.server import Chunks
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire.framing import MAX_STARTUP_PACKET_LENGTH, FramingError, next_message, startup_packet_length
from rlsproxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupError,
    StartupMessage,
    build_cancel_request,
    build_negotiate_protocol_version,
    parse_startup_packet,
)

log = logging.getLogger("rlsproxy.server")


class Proxy:
    """Shared state of one running proxy: config, verifier, pools, cancel keys."""

    def __init__(self, config: Config, authenticator: Authenticator, classifier: Classifier) -> None:
        self.config = config
        self.authenticator = authenticator
        self.classifier = classifier
        up = config.upstream
        self.pool = Pool("users", up, config.pool, user=up.user, password=up.password)
        self.clients: dict[int, ClientConnection] = {}  # by the pid we handed out
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        lc = self.config.listen
        self._server = await loop.create_server(lambda: ClientConnection(self), lc.host, lc.port)
        self.spawn(self._reaper())

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

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients.values()):
            client.abort(sqlstate.ADMIN_SHUTDOWN, "terminating connection due to administrator command")
        self.pool.close_all()
        for task in list(self._tasks):
            task.cancel()

    def new_key(self, client: ClientConnection) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbits(31) or 1
            if pid not in self.clients:
                self.clients[pid] = client
                return pid, secrets.token_bytes(4)

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


class ClientConnection(asyncio.Protocol):
    """One client: startup handshake, then relaying through its Relay."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.server: ServerConnection | None = None
        self.relay: Relay | None = None
        self.identity: Identity | None = None
        self.key_pid = 0
        self.key_secret = b""
        self._inbox = b""  # bytes received during the handshake
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self._peer = ""

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.proxy.spawn(self._handshake())

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is None:
            self._inbox += data
            if self._wakeup is not None and not self._wakeup.done():
                self._wakeup.set_result(None)
            return
        to_server: Chunks = []
        to_client: Chunks = []
        try:
            relay.feed_client(data, to_server, to_client)
        except ProxyError as exc:
            self.abort(exc.sqlstate, exc.message)
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
        if relay.terminated:
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        self._finish()

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
        except (ProxyError, FramingError) as exc:
            log.error("upstream protocol error: %s", exc)
            self.abort(sqlstate.CONNECTION_FAILURE, "rlsproxy: lost sync with the upstream server")
            return
        if to_client:
            self._write(to_client)
        if to_server and self.server is not None:
            self.server.write(to_server)

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
    def _write(self, chunks: Iterable[bytes | memoryview]) -> None:
        if self.transport is not None and not self._closed:
            self.transport.writelines(chunks)

    def abort(self, code: str, message: str, *, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse and close."""
        if self.transport is not None and not self._closed:
            self.transport.write(be.error_response(code, message, severity="FATAL", hint=hint))
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        self.proxy.clients.pop(self.key_pid, None)
        server, self.server = self.server, None
        relay, self.relay = self.relay, None
        if server is not None:
            reusable = not server.closed and (relay is None or not relay.busy)
            if relay is not None:
                relay.detach()
            self.proxy.spawn(self.proxy.pool.release(server, reusable=reusable))

    # handshake --------------------------------------------------------------------------------
    async def _read(self, need: int) -> None:
        while len(self._inbox) < need:
            if self._closed:
                raise ConnectionError("client went away")
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    async def _handshake(self) -> None:
        timeout = self.proxy.config.limits.startup_timeout_s
        try:
            startup = await asyncio.wait_for(self._read_startup(), timeout)
            if startup is None:
                return
            client, token = await asyncio.wait_for(self._credentials(startup), timeout)
            await self._begin(client, token)
        except TimeoutError:
            self.abort(sqlstate.PROTOCOL_VIOLATION, "rlsproxy: startup timed out")
        except (StartupError, FramingError) as exc:
            self.abort(sqlstate.PROTOCOL_VIOLATION, f"invalid startup packet: {exc}")
        except ProxyError as exc:
            self.abort(exc.sqlstate, exc.message, hint=exc.hint)
        except ConnectionError:
            self._finish()
        except Exception:
            log.exception("bug during client startup")
            self.abort(sqlstate.INTERNAL_ERROR, "rlsproxy internal error during startup")

    async def _read_startup(self) -> StartupMessage | None:
        while True:
            await self._read(4)
            length = startup_packet_length(self._inbox)
            await self._read(length)
            packet, self._inbox = self._inbox[:length], self._inbox[length:]
            request = parse_startup_packet(packet)
            if isinstance(request, SSLRequest | GSSENCRequest):
                # No TLS yet: 'N' tells the client to carry on in plaintext (or give up).
                assert self.transport is not None
                self.transport.write(b"N")
                continue
            if isinstance(request, CancelRequest):
                await self.proxy.cancel(request)
                self._finish()
                return None
            return request

    async def _credentials(self, startup: StartupMessage) -> tuple[ClientStartup, str | None]:
        if startup.minor > 0 or startup.protocol_options:
            assert self.transport is not None
            self.transport.write(build_negotiate_protocol_version(0, startup.protocol_options))
        client = read_startup(startup.params)
        database = self.proxy.config.upstream.database
        if client.database != database:
            raise ProxyError(
                f'database "{client.database}" does not exist',
                code=sqlstate.INVALID_CATALOG_NAME,
                fatal=True,
                hint=f'this rlsproxy serves the database "{database}"',
            )
        if client.token is not None or client.anonymous_requested:
            return client, client.token
        # No token in the startup packet: ask for it as the password (for URL-only ORMs).
        assert self.transport is not None
        self.transport.write(be.AUTHENTICATION_CLEARTEXT_PASSWORD)
        await self._read(5)
        if self._inbox[0] != codes.PASSWORD_MESSAGE:
            raise ProtocolViolation(f"expected password response, got message type {self._inbox[0]}")
        end = next_message(self._inbox, 0, MAX_STARTUP_PACKET_LENGTH)
        while end < 0:
            await self._read(len(self._inbox) + 1)
            end = next_message(self._inbox, 0, MAX_STARTUP_PACKET_LENGTH)
        body, self._inbox = self._inbox[5:end], self._inbox[end:]
        password = body[:-1].decode(errors="replace") if body.endswith(b"\0") else ""
        return client, password or None

    async def _begin(self, client: ClientStartup, token: str | None) -> None:
        proxy = self.proxy
        identity = proxy.authenticator.authenticate(token, label=client.label)
        server = await proxy.pool.acquire()
        self.server = server
        if self._closed:  # the client left while we waited for the pool
            self.server = None
            proxy.spawn(proxy.pool.release(server, reusable=True))
            return
        errors = await server.apply_settings(client.settings)
        if errors:
            first = errors[0]
            raise ProxyError(first.get("M", "invalid setting"), code=first.get("C"), fatal=True)
        state = server.state
        assert state is not None and self.transport is not None
        self.identity = identity
        self.key_pid, self.key_secret = proxy.new_key(self)
        greeting = [be.AUTHENTICATION_OK]
        greeting += [be.parameter_status(k, v) for k, v in state.params.items()]
        greeting += [be.backend_key_data(self.key_pid, self.key_secret), be.ready_for_query(codes.TX_IDLE)]
        relay = Relay(
            context.context_prefix(identity.role, identity.claims_json),
            proxy.classifier,
            max_message=proxy.config.limits.max_message_bytes,
        )
        relay.attach(state)
        server.listener = self
        self.relay = relay
        self.transport.writelines(greeting)
        log.info(
            "client connected",
            extra={"peer": self._peer, "role": identity.role, "anonymous": identity.anonymous},
        )
        if self._inbox:
            pending, self._inbox = self._inbox, b""
            self.data_received(pending)
