"""The proxy's own login to upstream Postgres, as a step machine: a request in, a reply body out, no I/O."""

from __future__ import annotations

import hashlib
import struct

from scramp import ScramClient, ScramException

from rlsproxy.errors import ProxyError
from rlsproxy.wire import sqlstate

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_SCRAM = "SCRAM-SHA-256"
_METHOD_NAMES = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}


class UpstreamAuth:
    """Answers the upstream server's AuthenticationXXX requests for one login."""

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self._password = password
        self._scram: ScramClient | None = None
        self.done = False

    def _fail(self, message: str, code: str = sqlstate.CONNECTION_FAILURE) -> ProxyError:
        return ProxyError(f'upstream login as "{self.user}": {message}', code=code, fatal=True)

    def _need_password(self, method: str) -> str:
        if self._password is None:
            raise self._fail(
                f"the server asks for a password ({method}) but none is configured", sqlstate.INVALID_PASSWORD
            )
        return self._password

    def respond(self, auth_code: int, payload: bytes) -> bytes | None:
        """The body of the 'p' message to send back, or None when nothing is to be sent."""
        if auth_code == AUTH_OK:
            self.done = True
            return None
        if auth_code == AUTH_CLEARTEXT:
            return self._need_password("cleartext").encode() + b"\0"
        if auth_code == AUTH_MD5:
            if len(payload) != 4:
                raise self._fail("malformed MD5 request (salt is not 4 bytes)", sqlstate.PROTOCOL_VIOLATION)
            password = self._need_password("md5")
            inner = hashlib.md5((password + self.user).encode()).hexdigest()
            return b"md5" + hashlib.md5(inner.encode("ascii") + payload).hexdigest().encode("ascii") + b"\0"
        if auth_code == AUTH_SASL:
            return self._sasl_start(payload)
        if auth_code == AUTH_SASL_CONTINUE:
            scram = self._scram_step("SASLContinue")
            try:
                scram.set_server_first(payload.decode("utf-8"))
                return str(scram.get_client_final()).encode("utf-8")
            except (ScramException, UnicodeDecodeError) as exc:
                raise self._fail(f"{_SCRAM} exchange failed: {exc}") from None
        if auth_code == AUTH_SASL_FINAL:
            scram = self._scram_step("SASLFinal")
            try:
                scram.set_server_final(payload.decode("utf-8"))
            except (ScramException, UnicodeDecodeError):
                # The server could not prove it knows the password: it may not be the server we meant.
                raise self._fail(f"{_SCRAM} server signature does not verify") from None
            self._scram = None
            return None
        method = _METHOD_NAMES.get(auth_code, f"code {auth_code}")
        raise self._fail(
            f"the server asks for {method} authentication, which rlsproxy does not support; "
            "use scram-sha-256, md5 or password in pg_hba.conf"
        )

    def _scram_step(self, step: str) -> ScramClient:
        if self._scram is None:
            raise self._fail(f"unexpected {step} before a SASL exchange started", sqlstate.PROTOCOL_VIOLATION)
        return self._scram

    def _sasl_start(self, payload: bytes) -> bytes:
        mechanisms = [m.decode("utf-8", "replace") for m in payload.split(b"\0") if m]
        if _SCRAM not in mechanisms:
            offered = ", ".join(mechanisms) or "none"
            raise self._fail(
                f"the server offers SASL mechanisms {offered}; rlsproxy supports only {_SCRAM} "
                "(no channel binding)"
            )
        password = self._need_password(_SCRAM)
        try:
            self._scram = ScramClient([_SCRAM], self.user, password)
        except ScramException:
            # Postgres ignores the SCRAM user name, so one SASLprep rejects can simply be left empty.
            try:
                self._scram = ScramClient([_SCRAM], "", password)
            except ScramException:
                message = f"the password cannot be used with {_SCRAM}"
                raise self._fail(message, sqlstate.INVALID_PASSWORD) from None
        first = str(self._scram.get_client_first()).encode("utf-8")
        return _SCRAM.encode("ascii") + b"\0" + struct.pack("!i", len(first)) + first
