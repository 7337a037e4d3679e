"""A bare uvloop byte relay: the floor under any Python/uvloop proxy (a benchmark target only).

Per client, one upstream connection opened when the client connects, and bytes copied across as
they arrive: no parsing, no pooling, no identity. Its CPU per transaction is what the runtime
costs (uvloop callbacks, the socket calls); rlsproxy's CPU above it is rlsproxy's own work.

    python -m bench.bare_relay LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import cast

import uvloop

from bench.ports import free_port, start_logged, stop_process

HOST = "127.0.0.1"


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream_address = upstream
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.early: list[bytes] = []  # what came before the upstream connection was up
        self.task: asyncio.Task[None] | None = None  # held so the connecting task is not collected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.upstream_address
        _, upstream = await asyncio.get_running_loop().create_connection(self.make_upstream, host, port)
        self.upstream = upstream
        assert upstream.transport is not None
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()

    def make_upstream(self) -> Upstream:
        return Upstream(self)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None or self.upstream.transport is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def _serve(port: int, upstream: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Client(upstream), HOST, port)
    await server.serve_forever()


class RelayProcess:
    """The relay as a process of its own (its CPU time read from /proc like the proxy's)."""

    module = "bench.bare_relay"  # run with: LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT *extra

    def __init__(self, upstream_host: str, upstream_port: int, workdir: Path, *extra: str) -> None:
        self.host = HOST
        self.port = free_port(HOST)
        self.log_path = workdir / f"{self.module.rpartition('.')[2]}.log"
        argv = [sys.executable, "-m", self.module, str(self.port), upstream_host, str(upstream_port), *extra]
        self.proc = start_logged(argv, self.log_path, self.host, self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))))
