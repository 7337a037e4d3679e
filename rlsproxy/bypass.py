"""The audit trail of service sessions (the only sessions that may bypass RLS).

Every line is written before the proxy forwards what it describes, so the trail never lags behind
the database: `bypass.start` before the client gets its first ReadyForQuery, `bypass.statement`
before the statement goes upstream. Any write failure raises AuditUnavailable and the edge ends the
session (fail closed). Tokens never reach the trail; the AuditLog refuses credential-named fields.
"""

from __future__ import annotations

import contextlib
import time

from rlsproxy.audit import AuditLog, AuditUnavailable
from rlsproxy.auth.identity import BypassDenied, Identity
from rlsproxy.metrics import Metrics
from rlsproxy.session.simple import decode_sql


class BypassTrail:
    """One service session: its start, each statement it runs, its end."""

    def __init__(
        self,
        audit: AuditLog,
        metrics: Metrics,
        identity: Identity,
        *,
        session: int,
        client: str,
        database: str,
    ) -> None:
        assert identity.service is not None
        self._audit = audit
        self._metrics = metrics
        self._service = identity.service
        self._label = identity.label
        self._identity = identity
        self._session = session
        self._client = client
        self._database = database
        self._started = time.monotonic()
        self.statements = 0
        self.ended = False

    def start(self) -> None:
        """Write bypass.start; AuditUnavailable if it cannot be written (refuse the session then)."""
        self._audit.write(
            "bypass.start",
            session=self._session,
            service=self._service,
            label=self._label,
            sub=self._identity.subject,
            role=self._identity.role,
            client=self._client,
            database=self._database,
        )
        self._metrics.bypass_started(self._service, self._label)

    def statement(self, sql: bytes) -> None:
        """Called by the relay before a statement is forwarded."""
        self.statements += 1
        self._metrics.bypass_statement(self._service, self._label)
        text = decode_sql(sql)[0] if sql else ""
        self._audit.write(
            "bypass.statement",
            session=self._session,
            service=self._service,
            label=self._label,
            n=self.statements,
            **self._audit.statement_fields(text),
        )

    def end(self, *, bytes_in: int, bytes_out: int, reason: str) -> None:
        """Write bypass.end once; a failure here is counted and logged by the caller, nothing to refuse."""
        if self.ended:
            return
        self.ended = True
        self._audit.write(
            "bypass.end",
            session=self._session,
            service=self._service,
            label=self._label,
            duration_s=round(time.monotonic() - self._started, 6),
            statements=self.statements,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            reason=reason,
        )


def record_denied(
    audit: AuditLog, metrics: Metrics, denied: BypassDenied, *, client: str, database: str
) -> None:
    """Count a refused bypass attempt and write its bypass.denied line (best effort: it is refused anyway)."""
    metrics.bypass_refused(denied.reason)
    # Best effort: a failed write is counted by the AuditLog's on_failure hook; refused either way.
    with contextlib.suppress(AuditUnavailable):
        audit.write(
            "bypass.denied",
            reason=denied.reason,
            message=denied.message,
            service=denied.service,
            sub=denied.subject,
            requested_role=denied.requested_role,
            label=denied.label,
            client=client,
            database=database,
        )
