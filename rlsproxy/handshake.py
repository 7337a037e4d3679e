"""A client's startup up to its credentials: the startup packet, TLS, the token or the password.

`credentials_now` takes them from what the connection has buffered (`ClientConnection.inbox`)
when nothing needs a wait, which is most connections; otherwise `client_credentials` runs in the
connection's handshake task, waiting for more with `ClientConnection.read_at_least`. What comes
after (authenticating the token, greeting the client, attaching a server) is the connection's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from typing import TYPE_CHECKING, Final

from jwt import get_unverified_header
from jwt.exceptions import PyJWTError

from rlsproxy.auth.startup import JWT_PARAM, ClientStartup, read_startup
from rlsproxy.errors import AuthError, ProtocolViolation, ProxyError
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes, sqlstate
from rlsproxy.wire.framing import MAX_STARTUP_PACKET_LENGTH, next_message, startup_packet_length
from rlsproxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    build_negotiate_protocol_version,
    parse_startup_packet,
)

if TYPE_CHECKING:
    from rlsproxy.server import ClientConnection

log = logging.getLogger("rlsproxy.server")


class Cancelled(Exception):
    """The connection was a cancel request, now passed on: not a client session."""


async def client_credentials(conn: ClientConnection) -> tuple[ClientStartup, str | None]:
    """The client's startup parameters and its token (from the startup packet or the password)."""
    packet, startup = await _startup_message(conn)
    return await _credentials(conn, packet, startup)


# What credentials_now answers when it has no credentials to return.
MORE_BYTES: Final = "more bytes"  # the packet is not all there: wait for the next read, no task
NEEDS_TASK: Final = "needs task"  # a step that waits (TLS, cancel, password, JWKS): client_credentials


def credentials_now(conn: ClientConnection) -> tuple[ClientStartup, str | None] | str:
    """What client_credentials would return, taken from the inbox with no wait: most clients send
    an SSLRequest (answered 'N' here when listen.tls is not set), then a StartupMessage with their
    token (or asking for anonymous access) whose signing key is known.

    Else MORE_BYTES (a packet still incomplete; the proxy's startup sweep enforces the timeout) or
    NEEDS_TASK, with the inbox at the packet client_credentials starts from. Errors are raised as
    client_credentials raises them, after the same checks in the same order.
    """
    while True:
        inbox = conn.inbox
        if len(inbox) < 4:
            return MORE_BYTES
        length = startup_packet_length(inbox)  # a length Postgres refuses fails now, not at the timeout
        if len(inbox) < length:
            return MORE_BYTES
        if inbox[4:8] == _CANCEL_CODE:
            return NEEDS_TASK
        packet = inbox[:length]
        startup = _parsed_packet(packet)
        if isinstance(startup, StartupMessage):
            break
        if isinstance(startup, SSLRequest) and (conn.tls or conn.proxy.tls_context is not None):
            return NEEDS_TASK  # a TLS handshake, or a protocol violation to report
        # SSLRequest without listen.tls, or GSSENCRequest: 'N' tells the client to carry on in plaintext.
        assert conn.transport is not None
        conn.transport.write(b"N")
        conn.inbox = inbox[length:]
    try:
        peek = _client_startup(packet)  # a look ahead: refusals are raised by the checks below
    except ProxyError:
        return NEEDS_TASK
    token = peek.token
    if (token is None and not peek.anonymous_requested) or not conn.proxy.keys_ready(token):
        return NEEDS_TASK
    conn.inbox = inbox[length:]
    return _checked_startup(conn, packet, startup), token


# A pool's new connections, or a client reconnecting, send the same startup packet byte for byte
# (the token included): what it says is kept, about 10 µs per connection (parsing the packet and
# its options, checking the settings). Only what parsed is kept, and no cancel request (each has
# its own key). The token is still verified every time (the verifier's cache is bounded by expiry).
_CANCEL_CODE = codes.CANCEL_REQUEST_CODE.to_bytes(4, "big")
_KEPT_STARTUPS = 256


@functools.lru_cache(maxsize=_KEPT_STARTUPS)
def _parsed_packet(packet: bytes) -> StartupPacket:
    return parse_startup_packet(packet)


@functools.lru_cache(maxsize=_KEPT_STARTUPS)
def _client_startup(packet: bytes) -> ClientStartup:
    """read_startup of a StartupMessage packet (refusals raise every time: errors are not kept)."""
    startup = _parsed_packet(packet)
    assert isinstance(startup, StartupMessage)
    return read_startup(startup.params)


async def _startup_message(conn: ClientConnection) -> tuple[bytes, StartupMessage]:
    proxy = conn.proxy
    while True:
        await conn.read_at_least(4)
        length = startup_packet_length(conn.inbox)
        await conn.read_at_least(length)
        packet, conn.inbox = conn.inbox[:length], conn.inbox[length:]
        request = parse_startup_packet(packet) if packet[4:8] == _CANCEL_CODE else _parsed_packet(packet)
        if isinstance(request, SSLRequest):
            await _start_tls(conn)
            continue
        if isinstance(request, GSSENCRequest):
            # No GSSAPI encryption: 'N' tells the client to carry on (or to try TLS next).
            assert conn.transport is not None
            conn.transport.write(b"N")
            continue
        if isinstance(request, CancelRequest):
            await proxy.cancel(request)
            raise Cancelled
        return packet, request


async def _start_tls(conn: ClientConnection) -> None:
    """SSLRequest: 'S' and a TLS handshake when listen.tls is set, else 'N' (carry on in plaintext)."""
    transport = conn.transport
    assert transport is not None
    context = conn.proxy.tls_context
    if conn.tls:
        raise ProtocolViolation("SSLRequest on a connection that already uses TLS")
    if context is None:
        transport.write(b"N")
        return
    if conn.inbox:
        # Sent before our answer, so in plaintext: a man in the middle could have injected it.
        raise ProtocolViolation("received unencrypted data after SSLRequest")
    transport.write(b"S")
    try:
        upgraded = await asyncio.get_running_loop().start_tls(transport, conn, context, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        log.info("TLS handshake failed", extra={"peer": conn.peer, "error": str(exc)})
        conn.close("tls handshake failed")
        raise ProtocolViolation("TLS handshake failed") from None
    if upgraded is None:  # the client went away during the handshake
        raise ConnectionError("client went away")
    conn.transport = upgraded
    conn.tls = True


def _refuse_insecure(conn: ClientConnection, asks_password: bool) -> None:
    """listen.tls.require, and no token as a cleartext password from afar without TLS."""
    listen = conn.proxy.config.listen
    if conn.tls:
        return
    if listen.tls is not None and listen.tls.require:
        raise ProxyError(
            "rlsproxy: TLS is required (listen.tls.require); connect with sslmode=require",
            code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            fatal=True,
        )
    if asks_password and not listen.allow_cleartext_password_without_tls:
        assert conn.transport is not None
        peer = conn.transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not conn.proxy.peer_is_local(host):
            hint = "listen.allow_cleartext_password_without_tls: true allows it on a trusted network"
            if listen.tls is not None:
                hint = "connect with sslmode=require"
            raise AuthError(
                "cleartext_password",
                "rlsproxy: a token sent as a cleartext password without TLS is refused from a "
                "non-loopback address (listen.allow_cleartext_password_without_tls is false)",
                code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
                hint=hint,
            )


async def _credentials(
    conn: ClientConnection, packet: bytes, startup: StartupMessage
) -> tuple[ClientStartup, str | None]:
    client = _checked_startup(conn, packet, startup)
    if client.token is not None or client.anonymous_requested:
        await conn.proxy.await_keys(client.token)
        return client, client.token
    # No token in the startup packet: ask for it as the password (for URL-only ORMs).
    _refuse_insecure(conn, asks_password=True)
    assert conn.transport is not None
    conn.transport.write(be.AUTHENTICATION_CLEARTEXT_PASSWORD)
    await conn.read_at_least(5)
    if conn.inbox[0] != codes.PASSWORD_MESSAGE:
        raise ProtocolViolation(f"expected password response, got message type {conn.inbox[0]}")
    end = next_message(conn.inbox, 0, MAX_STARTUP_PACKET_LENGTH)
    while end < 0:
        await conn.read_at_least(len(conn.inbox) + 1)
        end = next_message(conn.inbox, 0, MAX_STARTUP_PACKET_LENGTH)
    body, conn.inbox = conn.inbox[5:end], conn.inbox[end:]
    password = body[:-1].decode(errors="replace") if body.endswith(b"\0") else ""
    if password:
        _refuse_non_jwt_password(conn, password)
    await conn.proxy.await_keys(password or None)
    return client, password or None


def _refuse_non_jwt_password(conn: ClientConnection, password: str) -> None:
    """A password that is not a JWT at all (a database password, typed at psql's prompt): refused as
    the token check would refuse it, with a hint that says what the password is and how else a token
    can be passed."""
    try:
        get_unverified_header(password)
    except PyJWTError:
        hint = f"The password is the client's JWT; it can also be sent as options='-c {JWT_PARAM}=<token>'"
        if conn.proxy.config.roles.anonymous is not None:
            hint += f", or as options='-c {JWT_PARAM}=' (empty) for anonymous access"
        raise AuthError(
            "malformed",
            "token is not a well-formed JWT",
            code=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
            hint=hint + ".",
        ) from None


def _checked_startup(conn: ClientConnection, packet: bytes, startup: StartupMessage) -> ClientStartup:
    """The startup packet's checks, in order: shutting down, TLS required, protocol version, the
    parameters, the database."""
    proxy = conn.proxy
    if proxy.draining:
        raise ProxyError("rlsproxy is shutting down", code=sqlstate.CANNOT_CONNECT_NOW, fatal=True)
    _refuse_insecure(conn, asks_password=False)
    assert conn.transport is not None
    if startup.minor > 0 or startup.protocol_options:
        conn.transport.write(build_negotiate_protocol_version(0, startup.protocol_options))
    client = _client_startup(packet)
    database = proxy.config.upstream.database
    if client.database != database:
        raise ProxyError(
            f'database "{client.database}" does not exist',
            code=sqlstate.INVALID_CATALOG_NAME,
            fatal=True,
            hint=f'this rlsproxy serves the database "{database}"',
        )
    return client
