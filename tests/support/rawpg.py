"""A minimal raw protocol-3 client for byte-level tests (no driver smoothing anything over)."""

from __future__ import annotations

import socket
import struct

from rlsproxy.wire import backend as be
from rlsproxy.wire.startup import build_startup_message

Message = tuple[str, bytes]


class RawConnection:
    def __init__(self, port: int, params: dict[str, str], *, password: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.sock.sendall(build_startup_message(params))
        self.greeting: list[Message] = []
        while True:
            t, body = self.read()
            self.greeting.append((t, body))
            if t == "R" and body[:4] == b"\x00\x00\x00\x03":
                assert password is not None, "server asked for a password"
                secret = password.encode() + b"\0"
                self.sock.sendall(b"p" + struct.pack("!i", len(secret) + 4) + secret)
            if t in ("Z", "E"):
                break

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Message:
        while True:
            if len(self.buf) >= 5:
                length = int.from_bytes(self.buf[1:5], "big")
                if len(self.buf) >= 1 + length:
                    t, body = chr(self.buf[0]), self.buf[5 : 1 + length]
                    self.buf = self.buf[1 + length :]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk

    def until_ready(self, count: int = 1) -> list[Message]:
        """Read messages until `count` ReadyForQuery have arrived."""
        out: list[Message] = []
        while count:
            msg = self.read()
            out.append(msg)
            if msg[0] == "Z":
                count -= 1
        return out

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()


def error_fields(msg: Message) -> dict[str, str]:
    assert msg[0] in ("E", "N"), msg
    return be.parse_fields(msg[1])


def data_rows(replies: list[Message]) -> list[list[str | None]]:
    """The DataRows among `replies`, each as its text values (None for NULL)."""
    out = []
    for t, body in replies:
        if t == "D":
            count, pos, row = int.from_bytes(body[:2], "big"), 2, []
            for _ in range(count):
                n = int.from_bytes(body[pos : pos + 4], "big", signed=True)
                pos += 4
                row.append(None if n < 0 else body[pos : pos + n].decode())
                pos += max(n, 0)
            out.append(row)
    return out


def errors(replies: list[Message]) -> list[dict[str, str]]:
    """The fields of each ErrorResponse among `replies`."""
    return [be.parse_fields(body) for t, body in replies if t == "E"]
