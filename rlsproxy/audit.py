"""The RLS-bypass audit trail: one JSON object per line, on disk before the caller goes on."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from pglast import parser

from rlsproxy.config import AuditConfig

# Defensive: a credential must never reach the audit trail, whoever builds the fields.
FORBIDDEN_FIELDS: Final = frozenset({"token", "password", "jwt", "secret"})
_RESERVED_FIELDS: Final = frozenset({"ts", "event"})

# Literal tokens of PostgreSQL's scanner: strings (including dollar-quoted, E'', U&''), numbers, bit strings.
_LITERALS: Final = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENTS: Final = frozenset({"SQL_COMMENT", "C_COMMENT"})
# Normalized text carries no literals, but a bulk INSERT still makes a very long line.
MAX_NORMALIZED: Final = 2000


class AuditUnavailable(Exception):
    """The audit log cannot be written; bypass sessions must be refused (fail closed)."""


class AuditLog:
    """Appends audit events to cfg.path ("-" is stdout).

    Each line goes out in one write() on an O_APPEND descriptor, so there is no user-space buffer to
    flush: when write() returns, the line is in the kernel and survives a crash of the proxy.
    fsync (off by default) would also survive a crash of the host, at the cost of a disk round trip
    on the event loop for every audited statement; turn it on with fsync=True where that matters.
    """

    def __init__(
        self,
        cfg: AuditConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[], None] | None = None,
        fsync: bool = False,
    ) -> None:
        self.path = cfg.path
        self.statements = cfg.statements
        self._clock = clock
        self._on_failure = on_failure
        self._fsync = fsync
        self._fd: int | None = None
        self._stdout = cfg.path == "-"
        self._open = False

    def open(self) -> None:
        """Open the path for appending (creating it 0600); AuditUnavailable if that is not possible."""
        if self._stdout:
            self._open = True
            return
        try:
            # 0600: the trail names subjects and services; other local users have no business reading it.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditUnavailable(f"cannot open audit log {self.path}: {exc.strerror or exc}") from None
        self._fd = fd
        self._open = True

    def ensure_open(self) -> None:
        """Open now if an earlier open failed (the path may have become writable); AuditUnavailable if not."""
        if not self._open:
            self.open()

    def reopen(self) -> None:
        """After logrotate moved the file: write to a fresh one at the same path. A no-op for stdout."""
        if self._stdout:
            return
        self.close()
        self.open()

    def close(self) -> None:
        self._open = False
        fd, self._fd = self._fd, None
        if fd is not None:
            # Nothing useful to do if close fails: every line was already handed to the kernel.
            with contextlib.suppress(OSError):
                os.close(fd)

    def write(self, event: str, **fields: object) -> None:
        """Append one event; returns only once the line is written. AuditUnavailable on any failure."""
        for name in fields:
            if name.lower() in FORBIDDEN_FIELDS:
                raise ValueError(
                    f"audit field {name!r} is not allowed: credentials never go in the audit log"
                )
            if name in _RESERVED_FIELDS:
                raise ValueError(f"audit field {name!r} is reserved")
        record = {"ts": _iso(self._clock()), "event": event, **fields}
        # ensure_ascii: client-supplied text may hold lone surrogates, which UTF-8 cannot encode.
        line = (json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode()
        try:
            self._emit(line)
        except OSError as exc:
            if self._on_failure is not None:
                self._on_failure()
            raise AuditUnavailable(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None

    def statement_fields(self, sql: str) -> dict[str, str]:
        """What a bypass.statement line records of `sql` under audit.statements."""
        if self.statements == "none":
            return {}
        if self.statements == "full":
            return {"statement": sql}
        return fingerprint(sql)

    def _emit(self, line: bytes) -> None:
        if not self._open:
            raise OSError("audit log is not open")
        if self._stdout:
            sys.stdout.write(line.decode())
            sys.stdout.flush()
            return
        fd = self._fd
        assert fd is not None
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(fd)


def _iso(ts: float) -> str:
    ms = int(ts * 1000)
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def fingerprint(sql: str) -> dict[str, str]:
    """{"fingerprint": 16 hex digits, "normalized": the text with every literal replaced by $n}.

    Built from PostgreSQL's own scanner rather than pglast's normalize() and fingerprint(): those
    keep literals in DDL and comments (`ALTER ROLE r PASSWORD 'x'`, `SELECT 1 -- x`), and a 64-bit hash
    over a password is a dictionary attack away from the password. Here comments are dropped and the
    fingerprint hashes only the literal-free token stream (keywords and unquoted names lowercased), so
    it is the same for the same statement with other literals, spacing or case. Lists of different
    lengths (`IN (1, 2)` and `IN (1, 2, 3)`) do fingerprint differently.
    Text the scanner rejects (an unterminated quote) gives {"fingerprint": "unscannable", "normalized": ""}.
    """
    try:
        tokens = parser.scan(sql)
    except (parser.ParseError, UnicodeError):
        return {"fingerprint": "unscannable", "normalized": ""}
    # New placeholders continue after the highest $n the statement already has, as libpg_query does.
    params = [int(sql[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"]
    n = max(params, default=0)
    shown: list[str] = []
    canonical: list[str] = []
    prev_end = -1
    for t in tokens:
        if t.name in _COMMENTS:
            continue
        if t.name in _LITERALS:
            n += 1
            text = f"${n}"
            canonical.append("?")
        else:
            text = sql[t.start : t.end + 1]
            canonical.append(text if text.startswith(('"', "U&", "u&")) else text.lower())
        if shown and t.start > prev_end + 1:
            shown.append(" ")
        shown.append(text)
        prev_end = t.end
    digest = hashlib.sha256(" ".join(canonical).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    normalized = "".join(shown)
    if len(normalized) > MAX_NORMALIZED:
        normalized = normalized[:MAX_NORMALIZED] + "..."
    return {"fingerprint": digest, "normalized": normalized}
