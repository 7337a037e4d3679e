"""Everything under test, started in order and stopped in reverse, and the endpoints clients use.

A target is one way of reaching the same database:
  direct       PostgreSQL itself
  pgb-session  PgBouncer, session pooling
  pgb-tx       PgBouncer, transaction pooling
  rlsproxy     rlsproxy (session pooling; every transaction runs as the token's identity)
  rlsproxy-mypyc  the same, its hot path compiled with mypyc (setup.py), as the container image
               ships it; left out when it cannot be compiled here (bench/compiled.py)
  bare-relay   bench/bare_relay.py: bytes copied by uvloop, nothing else (the floor for Python)
  context-relay  bench/context_relay.py: the bare relay plus rlsproxy's context prefix per
               transaction, pgbench -S only (the floor for a Python proxy that sets the context)
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jwt

from bench.bare_relay import RelayProcess
from bench.cluster import clean_env, start_cluster
from bench.compiled import build_compiled_tree
from bench.context_relay import ContextRelayProcess
from bench.pgbouncer import INSTALL_HINT, POOL_SIZE, PgBouncerProcess, find_pgbouncer
from bench.proxy import JWT_SECRET, POOL_MAX_SIZE, ProxyProcess
from rlsproxy.auth.mint import mint_token
from rlsproxy.devcluster import ALICE, AUTHENTICATOR_PASSWORD, DevCluster

DIRECT, PGB_SESSION, PGB_TX, RLSPROXY = "direct", "pgb-session", "pgb-tx", "rlsproxy"
RLSPROXY_MYPYC = "rlsproxy-mypyc"
RLSPROXY_TARGETS = (RLSPROXY, RLSPROXY_MYPYC)  # the proxy itself, pure Python and compiled
BARE_RELAY = "bare-relay"
CONTEXT_RELAY = "context-relay"
Say = Callable[[str], None]  # progress output

ALL_TARGETS = (DIRECT, PGB_SESSION, PGB_TX, RLSPROXY, RLSPROXY_MYPYC)
PGBOUNCER_TARGETS = (PGB_SESSION, PGB_TX)
TOKEN_TTL_S = 24 * 3600  # outlives any run, so no token expires mid-benchmark

# "plain": pgbench's own tables, superuser login where there is one (RLS not involved).
# "rls": the authenticator login, for scripts that switch role and claims themselves.
Login = Literal["plain", "rls"]


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom a client connects; `middle_pid` is the pooler/proxy whose CPU we charge."""

    target: str
    host: str
    port: int
    dbname: str
    user: str
    env: dict[str, str] = field(default_factory=dict)
    middle_pid: int | None = None

    def libpq_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, self.dbname]


def alice_token() -> str:
    return mint_token(JWT_SECRET, sub=ALICE, role="authenticated", ttl_s=TOKEN_TTL_S)


def alice_claims_json() -> str:
    """Claims shaped like those rlsproxy sets for alice_token(), for the context relay."""
    claims = jwt.decode(alice_token(), options={"verify_signature": False})
    return json.dumps(claims, separators=(",", ":"), sort_keys=True)


class Stack:
    """The cluster, rlsproxy and (when installed) PgBouncer."""

    def __init__(
        self,
        pg: DevCluster,
        proxy: ProxyProcess,
        pgbouncer: PgBouncerProcess | None,
        workdir: Path,
        relay: RelayProcess,
        context_relay: ContextRelayProcess,
        compiled_proxy: ProxyProcess | None = None,
    ) -> None:
        self.pg = pg
        self.workdir = workdir  # scratch space for scripts, removed with the stack
        self.proxy = proxy
        self.compiled_proxy = compiled_proxy
        self.pgbouncer = pgbouncer
        self.relay = relay
        self.context_relay = context_relay
        self.token = alice_token()

    @property
    def targets(self) -> tuple[str, ...]:
        missing: set[str] = set()
        if self.pgbouncer is None:
            missing.update(PGBOUNCER_TARGETS)
        if self.compiled_proxy is None:
            missing.add(RLSPROXY_MYPYC)
        return (*(t for t in ALL_TARGETS if t not in missing), BARE_RELAY, CONTEXT_RELAY)

    @property
    def proxies(self) -> tuple[ProxyProcess, ...]:
        """The rlsproxy processes running (the compiled one too, when it was built)."""
        return (self.proxy,) if self.compiled_proxy is None else (self.proxy, self.compiled_proxy)

    def available(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t for t in wanted if t in self.targets)

    def endpoint(self, target: str, login: Login = "plain") -> Endpoint:
        env = clean_env()
        if target == DIRECT:
            if login == "rls":
                env["PGPASSWORD"] = AUTHENTICATOR_PASSWORD
                return Endpoint(target, self.pg.host, self.pg.port, "app", "authenticator", env)
            return Endpoint(target, self.pg.host, self.pg.port, "app", "postgres", env)
        if target == BARE_RELAY:  # to Postgres as direct does, through the relay
            relay = self.relay
            return Endpoint(target, relay.host, relay.port, "app", "postgres", env, relay.pid)
        if target == CONTEXT_RELAY:  # logs in as direct does; sets the token's role and claims
            ctx = self.context_relay
            return Endpoint(target, ctx.host, ctx.port, "app", "postgres", env, ctx.pid)
        if target in RLSPROXY_TARGETS:
            proxy = self.proxy if target == RLSPROXY else self.compiled_proxy
            if proxy is None:
                raise ValueError(f"no target {target!r} (the compiled build could not be made)")
            # The user name is ignored by the proxy: the token decides who the client is.
            env["PGOPTIONS"] = f"-c rlsproxy.jwt={self.token}"
            return Endpoint(target, proxy.host, proxy.port, "app", "bench", env, proxy.pid)
        bouncer = self.pgbouncer
        if bouncer is None or target not in PGBOUNCER_TARGETS:
            raise ValueError(f"no target {target!r} (PgBouncer running: {bouncer is not None})")
        prefix = "auth" if login == "rls" else "app"
        suffix = "session" if target == PGB_SESSION else "tx"
        return Endpoint(target, bouncer.host, bouncer.port, f"{prefix}_{suffix}", "bench", env, bouncer.pid)


def needed_connections() -> int:
    """Server connections all pools and direct clients could hold at once, plus margin for psql."""
    pgbouncer_pools = POOL_SIZE * 4  # four database aliases, each its own pool
    return 2 * POOL_MAX_SIZE + pgbouncer_pools + 32 + 20  # two proxies: pure Python and compiled


@contextlib.contextmanager
def running_stack(say: Say) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="rlsproxy-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # PgBouncer runs as the cluster's system user and must reach its subdir
        say("starting PostgreSQL, loading pgbench -s 10 and the notes demo ...")
        pg = start_cluster(needed_connections())
        try:
            say(f"PostgreSQL on {pg.host}:{pg.port}")
            proxy = ProxyProcess(pg, _subdir(workdir, "rlsproxy"))
            compiled: ProxyProcess | None = None
            try:
                say(f"rlsproxy pid {proxy.pid} on {proxy.host}:{proxy.port}")
                tree = build_compiled_tree(_subdir(workdir, "compiled-build"), say)
                if tree is not None:
                    compiled = ProxyProcess(pg, _subdir(workdir, "rlsproxy-mypyc"), compiled_tree=tree)
                    say(f"rlsproxy-mypyc pid {compiled.pid} on {compiled.host}:{compiled.port}")
                bouncer = _start_pgbouncer(pg, _subdir(workdir, "pgbouncer"), say)
                relay = RelayProcess(pg.host, pg.port, _subdir(workdir, "relay"))
                context_relay = ContextRelayProcess(
                    pg.host, pg.port, "authenticated", alice_claims_json(), _subdir(workdir, "context-relay")
                )
                try:
                    scratch = _subdir(workdir, "scratch")
                    yield Stack(pg, proxy, bouncer, scratch, relay, context_relay, compiled)
                finally:
                    context_relay.stop()
                    relay.stop()
                    if bouncer is not None:
                        bouncer.stop()
            finally:
                if compiled is not None:
                    compiled.stop()
                proxy.stop()
        finally:
            pg.destroy()


def _start_pgbouncer(pg: DevCluster, workdir: Path, say: Say) -> PgBouncerProcess | None:
    binary = find_pgbouncer()
    if binary is None:
        say(f"{INSTALL_HINT} (skipping the pgb-session and pgb-tx targets)")
        return None
    bouncer = PgBouncerProcess(binary, pg, workdir)
    say(f"PgBouncer pid {bouncer.pid} on {bouncer.host}:{bouncer.port}")
    return bouncer


def _subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path
