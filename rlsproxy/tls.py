"""TLS contexts: the listener's (listen.tls) and the one for upstream connections (upstream.sslmode).

Both take their files from the validated config; a file that exists but does not load (not PEM, a
key that does not match the certificate, an encrypted key) is a ConfigError naming the key.
"""

from __future__ import annotations

import ssl

from rlsproxy.config import ConfigError, TlsConfig, UpstreamConfig

# Offered by libpq 17+ (and required by Postgres for sslnegotiation=direct); harmless otherwise.
ALPN = ["postgresql"]


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The listener's context: the certificate chain and key; TLS 1.2 or later; no client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    try:
        # No password: an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(cfg.cert, cfg.key, password=lambda: b"")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            [f"listen.tls: cannot use certificate {cfg.cert} with key {cfg.key}: {_reason(exc)}"]
        ) from None
    return context


def verifies(cfg: UpstreamConfig) -> bool:
    """Whether the upstream certificate is checked: verify-*, and require with a root CA (as libpq does)."""
    return cfg.sslmode in ("verify-ca", "verify-full") or (
        cfg.sslmode == "require" and cfg.sslrootcert is not None
    )


def upstream_context(cfg: UpstreamConfig) -> ssl.SSLContext | None:
    """The context for upstream connections; None for sslmode disable.

    prefer and require (without sslrootcert) encrypt without checking the certificate, as in libpq;
    verify-ca checks the chain, verify-full also that the certificate names upstream.host.
    """
    if cfg.sslmode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if not verifies(cfg):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.check_hostname = cfg.sslmode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if cfg.sslrootcert is not None:
            context.load_verify_locations(cafile=cfg.sslrootcert)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"upstream.sslrootcert: cannot load {cfg.sslrootcert}: {_reason(exc)}"]) from None
    return context


def client_context(cafile: str | None) -> ssl.SSLContext:
    """A verifying client context (hostname and chain) for HTTPS, e.g. jwt.jwks_url."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
