"""Hold many idle client connections open: `python -m bench.idle_clients` (run by bench.idle).

A process of its own so its thousands of sockets count against its own open-file limit, not the
benchmark's. Each client is a raw socket that completes the startup handshake (StartupMessage,
then AuthenticationOk ... ReadyForQuery, or an ErrorResponse) and then sends nothing.

Protocol with the parent: one JSON line on stdout once every client has settled (connected,
failed or timed out); then it holds the connections until its stdin closes, and prints a second
JSON line saying how many the server closed meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass

_PROTOCOL_3_0 = 196608
_CONNECTS_AT_ONCE = 200  # more than a listen backlog (100-128) at once only turns into SYN retries
TOKEN_ENV = "RLSPROXY_BENCH_TOKEN"


@dataclass
class Outcome:
    writer: asyncio.StreamWriter | None
    reader: asyncio.StreamReader | None
    error: str | None


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", _PROTOCOL_3_0)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's fields (type letter -> text)."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, packet: bytes) -> str | None:
    """None once ReadyForQuery arrives, else why not (SQLSTATE and message)."""
    writer.write(packet)
    while True:
        header = await reader.readexactly(5)
        kind, length = header[:1], struct.unpack("!i", header[1:])[0]
        body = await reader.readexactly(length - 4)
        if kind == b"Z":
            return None
        if kind == b"E":
            fields = error_fields(body)
            return f"{fields.get('C', '?')} {fields.get('M', '')}"
        if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
            return f"authentication request {struct.unpack('!i', body[:4])[0]} not supported here"


async def one_client(host: str, port: int, packet: bytes, gate: asyncio.Semaphore, timeout: float) -> Outcome:
    try:
        async with gate:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return Outcome(None, None, f"connect: {type(exc).__name__}: {exc}")
    try:
        error = await asyncio.wait_for(handshake(reader, writer, packet), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        error = f"startup: {type(exc).__name__} {exc}".strip()
    if error is not None:
        writer.close()
        return Outcome(None, None, error)
    return Outcome(writer, reader, None)


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit when `wanted` sockets would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft, hard


async def main_async(args: argparse.Namespace) -> None:
    soft, hard = raise_open_files_limit(args.count + 64)
    count = min(args.count, soft - 64)
    params = {"user": args.user, "database": args.dbname, "application_name": "bench-idle"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        params["rlsproxy.jwt"] = token
    packet = startup_packet(params)
    gate = asyncio.Semaphore(_CONNECTS_AT_ONCE)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(one_client(args.host, args.port, packet, gate, args.timeout) for _ in range(count))
    )
    held = [o for o in outcomes if o.writer is not None]
    failures = Counter(o.error for o in outcomes if o.error is not None)
    _emit(
        {
            "requested": args.count,
            "attempted": count,
            "connected": len(held),
            "failed": dict(failures.most_common()),
            "settle_s": round(time.monotonic() - started, 2),
            "nofile_soft_hard": [soft, hard],
        }
    )
    # Hold until the parent closes our stdin; meanwhile anything the server sends, or EOF, counts as
    # the server dropping the idle client.
    loop = asyncio.get_running_loop()
    watchers = [asyncio.ensure_future(o.reader.read(1)) for o in held if o.reader is not None]
    await loop.run_in_executor(None, sys.stdin.read)
    dropped = sum(1 for w in watchers if w.done())
    for w in watchers:
        w.cancel()
    for o in held:
        assert o.writer is not None
        o.writer.close()
    _emit({"dropped_while_idle": dropped})


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per client to finish startup")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
