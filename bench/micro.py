"""In-process micro-benchmarks of the proxy's per-connection and per-statement work, with timeit.

JWT verification runs once per client connection (uncached: a token not seen before; cached: a
reconnect with the same token). The guard classifies every Query/Parse text: uncached is a full
parse by libpg_query plus the tree walk, cached a dict lookup on the exact text (the Classifier
in the relay keys on the raw bytes before decoding). A simple Query that misses the cache is also
translated into extended messages, which splits the text with the parser a second time.

The relay rows time one whole pgbench -S transaction through the sans-IO session machines
(Relay.feed_client with the client's bytes, then ServerState.receive with Postgres' replies to the
prefix and the statement): the proxy's own Python work per transaction without sockets, a far
steadier figure on a shared machine than a pgbench run.
"""

from __future__ import annotations

import tempfile
import timeit
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from rlsproxy.auth.jwt import TokenVerifier
from rlsproxy.auth.keys import KeyStore
from rlsproxy.auth.mint import mint_token
from rlsproxy.config import JwtConfig
from rlsproxy.session import context
from rlsproxy.session.expected import CTX_PREPARED
from rlsproxy.session.guard import Guard
from rlsproxy.session.relay import Classifier, Relay
from rlsproxy.session.server import Chunks, ServerState
from rlsproxy.session.simple import translate
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe

HS_SECRET = "micro-benchmark-secret-0123456789abcdef"

STATEMENTS = {
    "pgbench select": "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "tpcb update": "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 48213;",
    "notes read": "SELECT id, title FROM notes WHERE user_id = '11111111-1111-1111-1111-111111111111' "
    "ORDER BY created_at DESC LIMIT 10",
    "cte+join+window": """
        WITH recent AS (
            SELECT n.user_id, n.title, n.created_at,
                   row_number() OVER (PARTITION BY n.user_id ORDER BY n.created_at DESC) AS rn
            FROM notes n JOIN auth.users u ON u.id = n.user_id
            WHERE n.created_at > now() - interval '7 days'
        )
        SELECT user_id, count(*), max(created_at),
               (SELECT count(*) FROM notes x WHERE x.user_id = recent.user_id AND x.is_public)
        FROM recent WHERE rn <= 5 GROUP BY user_id ORDER BY 2 DESC LIMIT 20""",
    "DO block": """
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT id FROM notes WHERE is_public LOOP
                UPDATE notes SET content = coalesce(content, '') || '.' WHERE id = r.id;
            END LOOP;
        END $$""",
}


def _private_keys() -> dict[str, Any]:
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def _pem(private: Any) -> tuple[str, bytes]:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def jwt_cases(workdir: Path) -> Iterator[tuple[str, str, TokenVerifier, TokenVerifier]]:
    """(algorithm, token, uncached verifier, caching verifier), keys built as KeyStore.from_config does."""
    cfg = JwtConfig(algorithms=("HS256",), secret=HS_SECRET)
    yield "HS256", _token(HS_SECRET, "HS256"), *_verifiers(cfg, workdir)
    for alg, private in _private_keys().items():
        private_pem, public_pem = _pem(private)
        path = workdir / f"{alg}.pem"
        path.write_bytes(public_pem)
        cfg = JwtConfig(algorithms=(alg,), public_keys=(str(path),))
        yield alg, _token(private_pem, alg), *_verifiers(cfg, workdir)


def _token(key: str, alg: str) -> str:
    return mint_token(key, sub="11111111-1111-1111-1111-111111111111", role="authenticated", algorithm=alg)


def _verifiers(cfg: JwtConfig, workdir: Path) -> tuple[TokenVerifier, TokenVerifier]:
    keys = KeyStore.from_config(cfg, workdir)
    # cache_size=0 turns the cache off, so every call verifies the signature (a token never seen).
    return TokenVerifier(cfg, keys, cache_size=0), TokenVerifier(cfg, keys)


def time_per_op_us(fn: Callable[[], object], repeats: int) -> list[float]:
    """Microseconds per call, one figure per repeat; timeit picks a count lasting >= 0.2 s."""
    fn()  # warm caches (and fail early, outside the timing, if the call is broken)
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return [total / number * 1e6 for total in timer.repeat(repeat=repeats, number=number)]


def _reply(*messages: tuple[int, bytes]) -> bytes:
    return b"".join(be.message(t, body) for t, body in messages)


_ROW = (codes.DATA_ROW, b"\0\x01\0\0\0\x04-123")
_PREFIX_REPLY = _reply(
    (codes.BIND_COMPLETE, b""),
    (codes.DATA_ROW, b"\0\x02\0\0\0\x01r\0\0\0\x01c"),
    (codes.COMMAND_COMPLETE, b"SELECT 1\0"),
)
_ROW_DESCRIPTION = (
    codes.ROW_DESCRIPTION,
    b"\0\x01abalance\0" + bytes(6) + b"\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
)
_DONE = ((codes.COMMAND_COMPLETE, b"SELECT 1\0"), (codes.READY_FOR_QUERY, b"I"))
_DESCRIBE_PORTAL = be.message(codes.DESCRIBE, b"P\0")
_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = "


class RelayTransaction:
    """One pgbench -S transaction per call through a session attached to a prepared server state."""

    def __init__(self, mode: str) -> None:
        prefix = context.context_prefix("authenticated", '{"sub":"a","role":"authenticated"}')
        self.relay = Relay(prefix, Classifier(Guard(0)), max_message=1 << 24)
        state = ServerState({}, 1, b"key")
        state.ctx = CTX_PREPARED
        self.relay.attach(state)
        parse_complete, bind_complete = (codes.PARSE_COMPLETE, b""), (codes.BIND_COMPLETE, b"")
        if mode == "simple":  # a new text every time (literal values): guard and translation miss
            self.messages = [fe.query(f"{_SELECT}{aid};") for aid in range(100_000)]
            reply = _reply(parse_complete, bind_complete, _ROW_DESCRIPTION, _ROW, *_DONE)
        elif mode == "extended":
            parse = fe.parse("", f"{_SELECT}$1")
            self.messages = [
                parse + fe.bind("", (str(aid),)) + _DESCRIBE_PORTAL + fe.execute() + fe.SYNC
                for aid in range(1000)
            ]
            reply = _reply(parse_complete, bind_complete, _ROW_DESCRIPTION, _ROW, *_DONE)
        else:  # prepared: the statement was parsed once, before
            self.messages = [fe.bind("P0_1", (str(aid),)) + fe.execute() + fe.SYNC for aid in range(1000)]
            reply = _reply(bind_complete, _ROW, *_DONE)
        self.reply = _PREFIX_REPLY + reply
        self.client_sees = reply if mode != "simple" else _reply(_ROW_DESCRIPTION, _ROW, *_DONE)
        self.state = state
        self.i = 0

    def __call__(self) -> bytes:
        """One transaction; returns what the client is sent."""
        to_server: Chunks = []
        to_client: Chunks = []
        self.relay.feed_client(self.messages[self.i], to_server, to_client)
        self.i = (self.i + 1) % len(self.messages)
        b"".join(to_server)
        self.relay.feed_server(self.reply, to_client, to_server)
        return b"".join(to_client)


def run_micro(repeats: int) -> Iterator[tuple[str, str, list[float]]]:
    """(variant, target, µs per op per repeat) for every JWT algorithm and guard statement."""
    with tempfile.TemporaryDirectory(prefix="rlsproxy-bench-keys-") as tmp:
        for alg, token, uncached, cached in jwt_cases(Path(tmp)):
            yield f"jwt {alg}", "uncached", time_per_op_us(partial(uncached.verify, token), repeats)
            yield f"jwt {alg}", "cached", time_per_op_us(partial(cached.verify, token), repeats)
    for label, sql in STATEMENTS.items():
        raw = sql.encode()
        guard_off, guard_on, classifier = Guard(cache_size=0), Guard(), Classifier(Guard())
        yield f"guard {label}", "uncached", time_per_op_us(partial(guard_off.check, sql), repeats)
        yield f"guard {label}", "cached", time_per_op_us(partial(guard_on.check, sql), repeats)
        yield (
            f"guard {label}",
            "Classifier",
            time_per_op_us(partial(classifier.verdict, raw), repeats),
        )
        yield f"guard {label}", "translate", time_per_op_us(partial(translate, raw), repeats)
    for mode in ("simple", "extended", "prepared"):
        yield "relay -S transaction", mode, time_per_op_us(RelayTransaction(mode), repeats)
