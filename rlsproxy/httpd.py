"""The operations endpoint: /metrics, /healthz, /readyz and POST /reload over a minimal HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Final

from rlsproxy.config import HttpConfig
from rlsproxy.metrics import Metrics

log = logging.getLogger("rlsproxy.httpd")

Check = Callable[[], Awaitable[tuple[bool, str]]]

MAX_HEAD_BYTES: Final = 8 * 1024  # request line plus headers
MAX_BODY_BYTES: Final = 8 * 1024  # nothing here takes a body; a small one is read and ignored
MAX_CONNECTIONS: Final = 64  # scrapers and probes are few; more means someone is holding sockets open
READ_TIMEOUT_S: Final = 5.0  # for the whole request, so trickling a byte at a time does not extend it
READINESS_TIMEOUT_S: Final = 1.0
WRITE_TIMEOUT_S: Final = 5.0
LINGER_S: Final = 1.0

_ROUTES: Final = {"/metrics": "GET", "/healthz": "GET", "/readyz": "GET", "/reload": "POST"}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods and header names
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT: Final = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for names and anything unparsable."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


class HttpServer:
    """Serves the operations endpoints; every response closes its connection."""

    def __init__(
        self,
        cfg: HttpConfig,
        metrics: Metrics,
        *,
        readiness: Check,
        reload: Check | None = None,
        allow_remote_reload: bool = False,
        read_timeout_s: float = READ_TIMEOUT_S,
        peer_is_local: Callable[[str], bool] = is_loopback,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._readiness = readiness
        self._reload = reload
        self._allow_remote_reload = allow_remote_reload
        self._read_timeout_s = read_timeout_s
        self._peer_is_local = peer_is_local
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()  # two reloads at once would race on the live config

    async def start(self) -> None:
        # limit: a request line or header line longer than this fails readuntil() instead of buffering.
        self._server = await asyncio.start_server(
            self._serve, self._cfg.host, self._cfg.port, limit=MAX_HEAD_BYTES
        )

    @property
    def port(self) -> int:
        """The port actually bound (cfg.port may be 0)."""
        assert self._server is not None and self._server.sockets, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # one connection ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._handlers) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._handlers.add(task)
        sent = False
        try:
            status, body, headers = await self._respond(reader, writer)
            if status:
                await self._send(writer, status, body, headers)
                await _linger(reader, writer)
            sent = True
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing to tell it
        except Exception:
            log.exception("http handler failed")
        finally:
            self._handlers.discard(task)
            # close() would wait, unbounded, to flush to a client that does not read; abort() does not.
            if sent:
                writer.close()
            else:
                writer.transport.abort()

    async def _respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, extra headers); status 0 means close without answering."""
        try:
            async with asyncio.timeout(self._read_timeout_s):
                method, path = await _read_request(reader)
        except _BadRequest as exc:
            return exc.status, f"{exc}\n".encode(), {}
        except TimeoutError:
            return 408, b"request not received in time\n", {}
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, b"", {}
        allowed = _ROUTES.get(path)
        if allowed is None:
            return 404, b"not found\n", {}
        if method != allowed:
            return 405, f"use {allowed}\n".encode(), {"Allow": allowed}
        if path == "/metrics":
            return 200, self._metrics.render(), {"Content-Type": Metrics.CONTENT_TYPE}
        if path == "/healthz":
            return 200, b"ok\n", {}
        if path == "/readyz":
            ready, reason = await self._ready()
            return (200, b"ok\n", {}) if ready else (503, f"not ready: {reason}\n".encode(), {})
        return await self._do_reload(writer)

    async def _ready(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_S):
                return await self._readiness()
        except TimeoutError:
            return False, f"readiness check took longer than {READINESS_TIMEOUT_S:g}s"
        except Exception as exc:
            log.exception("readiness check failed")
            return False, f"readiness check failed ({type(exc).__name__})"

    async def _do_reload(self, writer: asyncio.StreamWriter) -> tuple[int, bytes, dict[str, str]]:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        if not self._allow_remote_reload and not self._peer_is_local(str(host)):
            return 403, b"reload is only allowed from loopback\n", {}
        if self._reload is None:
            return 404, b"reload is not available\n", {}
        async with self._reload_lock:
            try:
                ok, message = await self._reload()
            except Exception as exc:
                log.exception("reload failed")
                ok, message = False, f"reload failed ({type(exc).__name__})"
        return (200 if ok else 500), f"{message}\n".encode(), {}

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str]
    ) -> None:
        headers = {"Content-Type": _TEXT, **extra}
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        # A client that never reads must not pin the handler either.
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends, for a moment.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the reply
    (a 400 to a garbage request, say) before the client reads it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_S):
            while await reader.read(4096):
                pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """(method, path without query) of one request; its headers and small body are read and dropped."""
    line = await _read_line(reader, 414, "request line too long")
    budget = MAX_HEAD_BYTES - len(line)
    try:
        method, target, version = line.decode("ascii").rstrip("\r\n").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, "malformed request line") from None
    if not _TOKEN.fullmatch(method) or not target.startswith("/") or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(400, "malformed request line")
    content_length = 0
    while True:
        raw = await _read_line(reader, 431, "header too long")
        budget -= len(raw)
        if budget < 0:
            raise _BadRequest(431, "headers too long")
        if raw in (b"\r\n", b"\n"):
            break
        name, sep, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
        if not sep or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise _BadRequest(400, "malformed header")
        if name.lower() == "transfer-encoding":
            raise _BadRequest(400, "request bodies are not accepted")
        if name.lower() == "content-length":
            if not value.strip().isdigit():
                raise _BadRequest(400, "malformed Content-Length")
            content_length = int(value.strip())
    if content_length > MAX_BODY_BYTES:
        raise _BadRequest(413, "request body too large")
    if content_length:
        # Read it so closing the socket does not reset the connection before the reply arrives.
        await reader.readexactly(content_length)
    return method, target.split("?", 1)[0]


async def _read_line(reader: asyncio.StreamReader, status: int, too_long: str) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(status, too_long) from None
    return line
