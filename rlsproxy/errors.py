"""Errors the proxy raises itself, each carrying the SQLSTATE its ErrorResponse will have.

Errors that Postgres sends are relayed as bytes and never become one of these; an exception
that is not a ProxyError escaping a connection is a bug (it is logged and the client gets XX000).
"""

from __future__ import annotations

from rlsproxy.wire import sqlstate


class ProxyError(Exception):
    """An error that becomes an ErrorResponse to the client."""

    sqlstate: str = sqlstate.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fatal: bool = False,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.sqlstate = code
        self.fatal = fatal
        self.detail = detail
        self.hint = hint


class ProtocolViolation(ProxyError):
    """The client broke the wire protocol; the connection cannot continue."""

    sqlstate = sqlstate.PROTOCOL_VIOLATION

    def __init__(self, message: str) -> None:
        super().__init__(message, fatal=True)


class AuthError(ProxyError):
    """Identity could not be established. `reason` is a bounded label for metrics."""

    sqlstate = sqlstate.INVALID_AUTHORIZATION_SPECIFICATION

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        code: str | None = None,
        fatal: bool = True,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, fatal=fatal, hint=hint)
        self.reason = reason


class PoolTimeout(ProxyError):
    sqlstate = sqlstate.TOO_MANY_CONNECTIONS


class UpstreamUnavailable(ProxyError):
    sqlstate = sqlstate.CANNOT_CONNECT_NOW
