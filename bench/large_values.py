"""Large values: one 32 MB text read (a DataRow that takes many socket reads) or one 32 MB bytea
sent as a bind parameter (a Bind the proxy must read whole before the guard has seen it), over and
over on one connection. The figure is MB/s; the work unit is one value moved."""

from __future__ import annotations

import time

import psycopg

from bench.result import RunResult
from bench.stack import Endpoint

VALUE_BYTES = 32 * 1000 * 1000


def run_large(endpoint: Endpoint, duration_s: float, direction: str) -> RunResult:
    """`direction`: "read" (server to client) or "write" (client to server)."""
    conn = psycopg.connect(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        dbname=endpoint.dbname,
        password=endpoint.env.get("PGPASSWORD"),
        options=endpoint.env.get("PGOPTIONS", ""),
        autocommit=True,
    )
    value = b"v" * VALUE_BYTES
    moved = 0
    errors: list[str] = []
    try:
        started = time.perf_counter()
        while True:
            if direction == "read":
                row = conn.execute("SELECT repeat('v', %s)", (VALUE_BYTES,)).fetchone()
                got = len(row[0]) if row else 0
            else:
                row = conn.execute("SELECT length(%s::bytea)", (value,)).fetchone()
                got = row[0] if row else 0
            if got != VALUE_BYTES:
                errors.append(f"moved {got} bytes, expected {VALUE_BYTES}")
                break
            moved += 1
            elapsed = time.perf_counter() - started
            if elapsed >= duration_s:
                break
    except psycopg.Error as exc:
        errors.append(str(exc).strip().splitlines()[0])
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    value_mb = VALUE_BYTES / 1e6
    return RunResult(moved * value_mb / elapsed if moved else None, work=moved, errors=errors)
