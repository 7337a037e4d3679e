"""Splitting a byte stream into protocol messages, reading only headers.

A regular message is a type byte, an int32 length that counts itself, and a body. The startup
packet has no type byte. Limits are PostgreSQL's own: MAX_STARTUP_PACKET_LENGTH is 10000 bytes
(src/include/libpq/pqcomm.h); regular messages are capped by the caller (PqGetMessage's maxlen).
"""

from __future__ import annotations

from typing import Final

MAX_STARTUP_PACKET_LENGTH: Final = 10_000
HEADER: Final = 5


class FramingError(Exception):
    """The peer sent a length that cannot be right; the stream cannot be resynchronised."""


def next_message(buf: bytes | bytearray | memoryview, pos: int, limit: int) -> int:
    """Return the end offset of the message starting at `pos`, or -1 if it is not complete yet.

    Only the header is read. `limit` caps the whole message size (type byte included).
    """
    if len(buf) - pos < HEADER:
        return -1
    length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
    if length < 4 or length + 1 > limit:
        raise FramingError(f"invalid message length {length} for message type {buf[pos]:#04x}")
    end = pos + 1 + length
    return end if end <= len(buf) else -1


def startup_packet_length(buf: bytes | bytearray) -> int:
    """Return the total length of the startup packet at the start of `buf`, or -1 if unknown yet."""
    if len(buf) < 4:
        return -1
    length = int.from_bytes(buf[0:4], "big")
    if length < 8 or length > MAX_STARTUP_PACKET_LENGTH:
        raise FramingError(f"invalid startup packet length {length}")
    return length


# A message at least this large is passed on piece by piece, as its reads arrive, where the relay
# forwards it unread (a DataRow, COPY data): the proxy holds one read of it, never all of it.
STREAM_AT: Final = 64 * 1024


class Carry:
    """What one read leaves to the next: the rest of a large message being passed on as it comes
    (`passing`), or the start of a message kept until it is whole.

    A kept message is collected in one bytearray and joined once, when it is complete: a message
    that takes many reads (a 40 MB value) costs time linear in its size. (Prepending the leftover to
    every read copied it again each time: quadratic, seconds for tens of megabytes.)
    """

    __slots__ = ("_buf", "_need", "_passing")

    def __init__(self, *, passing: int = 0, kept: bytes | memoryview = b"") -> None:
        self._passing = passing
        self._buf = bytearray(kept)
        # Bytes the first kept message needs: all of it once its header is there, else the header
        # (the parser checks the length in it first: a lying length must fail, not be waited for).
        self._need = 1 + int.from_bytes(kept[1:5], "big") if len(kept) >= HEADER else HEADER

    def resume(self, data: bytes, out: list[bytes | memoryview]) -> tuple[bytes, int] | None:
        """Take the next read. None: it was used up (passed on to `out`, or kept). Else the bytes to
        parse and where the next message starts; what comes before it is still to be forwarded
        with what follows (the parser's run starts at 0). The carry is then spent."""
        if self._passing:
            if len(data) <= self._passing:
                self._passing -= len(data)
                out.append(data)
                return None
            return data, self._passing
        buf = self._buf
        buf += data
        return (bytes(buf), 0) if len(buf) >= self._need else None
