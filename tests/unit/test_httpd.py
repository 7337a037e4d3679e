"""The operations HTTP endpoint, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlsproxy.config import HttpConfig
from rlsproxy.httpd import HttpServer, is_loopback
from rlsproxy.metrics import Metrics

CFG = HttpConfig(host="127.0.0.1", port=0)


async def ready_ok() -> tuple[bool, str]:
    return True, "ok"


def run(test: Callable[[HttpServer], Awaitable[None]], **kwargs: Any) -> None:
    """Start a server on a free port, run the test against it, always close it."""

    async def main() -> None:
        kwargs.setdefault("readiness", ready_ok)
        server = HttpServer(CFG, kwargs.pop("metrics", Metrics()), **kwargs)
        await server.start()
        try:
            await asyncio.wait_for(test(server), 10)
        finally:
            await server.close()

    asyncio.run(main())


async def request(server: HttpServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read to EOF (every response closes), and split status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_metrics() -> None:
    metrics = Metrics()
    metrics.refusal("set_role")

    async def t(server: HttpServer) -> None:
        status, headers, body = await request(server, get("/metrics"))
        assert status == 200
        assert headers["content-type"] == Metrics.CONTENT_TYPE
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        refusals = {s.labels["rule"]: s.value for s in families["rlsproxy_guard_refusals"].samples}
        assert refusals["set_role"] == 1

    run(t, metrics=metrics)


def test_healthz_and_query_strings() -> None:
    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/healthz")))[::2] == (200, b"ok\n")
        assert (await request(server, get("/healthz?verbose=1")))[0] == 200

    run(t)


def test_readyz_follows_the_readiness_callable() -> None:
    state = {"ready": True, "hang": False}

    async def readiness() -> tuple[bool, str]:
        if state["hang"]:
            await asyncio.sleep(30)
        return (True, "ok") if state["ready"] else (False, "upstream unreachable")

    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/readyz")))[0] == 200
        state["ready"] = False
        status, _, body = await request(server, get("/readyz"))
        assert (status, body) == (503, b"not ready: upstream unreachable\n")
        state["ready"], state["hang"] = True, True
        started = time.monotonic()
        status, _, body = await request(server, get("/readyz"))
        assert status == 503 and b"1s" in body
        assert 0.9 < time.monotonic() - started < 3

    run(t, readiness=readiness)


def test_readyz_when_the_callable_raises() -> None:
    async def readiness() -> tuple[bool, str]:
        raise RuntimeError("secret detail")

    async def t(server: HttpServer) -> None:
        status, _, body = await request(server, get("/readyz"))
        assert status == 503 and b"secret detail" not in body

    run(t, readiness=readiness)


def test_reload() -> None:
    calls: list[int] = []
    result = {"ok": True}

    async def reload() -> tuple[bool, str]:
        calls.append(1)
        return (True, "reloaded") if result["ok"] else (False, "jwt.secret: required")

    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/reload", "POST")))[::2] == (200, b"reloaded\n")
        result["ok"] = False
        assert (await request(server, get("/reload", "POST")))[::2] == (500, b"jwt.secret: required\n")
        body = b"POST /reload HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"
        assert (await request(server, body))[0] == 500  # a small body is read and ignored
        assert (await request(server, get("/reload")))[0] == 405
        assert len(calls) == 3

    run(t, reload=reload)


def test_reload_refused_for_a_remote_peer_unless_allowed() -> None:
    calls: list[int] = []

    async def reload() -> tuple[bool, str]:
        calls.append(1)
        return True, "reloaded"

    async def refused(server: HttpServer) -> None:
        assert (await request(server, get("/reload", "POST")))[0] == 403
        assert (await request(server, get("/metrics")))[0] == 200  # only reload is restricted

    run(refused, reload=reload, peer_is_local=lambda host: False)
    assert calls == []

    async def allowed(server: HttpServer) -> None:
        assert (await request(server, get("/reload", "POST")))[0] == 200

    run(allowed, reload=reload, peer_is_local=lambda host: False, allow_remote_reload=True)
    assert calls == [1]


def test_reload_not_configured() -> None:
    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/reload", "POST")))[0] == 404

    run(t)


def test_not_found_and_wrong_method() -> None:
    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/")))[0] == 404
        assert (await request(server, get("/metrics/extra")))[0] == 404
        status, headers, _ = await request(server, get("/metrics", "POST"))
        assert status == 405 and headers["allow"] == "GET"
        assert (await request(server, get("/healthz", "DELETE")))[0] == 405

    run(t)


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: a\r\n continued\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ],
)
def test_malformed_requests_get_400(raw: bytes) -> None:
    async def t(server: HttpServer) -> None:
        assert (await request(server, raw))[0] == 400

    run(t)


def test_size_limits() -> None:
    async def t(server: HttpServer) -> None:
        assert (await request(server, get("/" + "a" * 9000)))[0] == 414
        big = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(100))
        assert (await request(server, big + b"\r\n"))[0] == 431
        assert (await request(server, b"POST /reload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"))[0] == 413

    run(t)


def test_slow_client_is_cut_off_after_the_timeout() -> None:
    async def t(server: HttpServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:
            # A header byte at a time, each well within the timeout, for far longer than the timeout.
            for _ in range(30):
                await asyncio.sleep(0.1)
                writer.write(b"X")
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            data = await asyncio.wait_for(reader.read(), 2.5)
        except ConnectionResetError:
            data = b""  # the server closed while bytes were still arriving: the reply may be lost
        elapsed = time.monotonic() - started
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        writer.close()
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
        assert 0.25 < elapsed < 1.5

    run(t, read_timeout_s=0.3)


def test_idle_connection_is_closed_after_the_timeout() -> None:
    async def t(server: HttpServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")

    run(t, read_timeout_s=0.2)


def test_close_ends_open_connections() -> None:
    async def main() -> None:
        server = HttpServer(CFG, Metrics(), readiness=ready_ok)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 2)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("localhost", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, local: bool) -> None:
    assert is_loopback(host) is local
