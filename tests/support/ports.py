"""Free loopback ports for servers a test starts.

Ports asked for together are held open at once until all are known, so they are distinct: two
separate bind-and-close calls may get the same port back (seen in CI: http.port == listen.port).
"""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> tuple[int, ...]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return tuple(int(sock.getsockname()[1]) for sock in sockets)


def free_port() -> int:
    return free_ports(1)[0]
