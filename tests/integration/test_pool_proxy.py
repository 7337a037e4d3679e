"""Session pooling: reuse without leaks, rollback on disconnect, exhaustion, upstream outages."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import psycopg
import pytest

from rlsproxy.config import PoolConfig
from rlsproxy.devcluster import ALICE, BOB
from rlsproxy.wire import frontend as fe
from tests.integration.conftest import token_for
from tests.support.proxy import RunningProxy
from tests.support.rawpg import RawConnection, error_fields


def test_server_connection_reused_without_leaking_state(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=3000))
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as a:
        pid = a.execute("select pg_backend_pid()").fetchone()
        a.execute("select set_config('app.tenant', 'alice-tenant', false)")
        a.execute("create temp table leftovers (x int)")
        a.execute("prepare mine as select 1")
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as b:
        assert b.execute("select pg_backend_pid()").fetchone() == pid  # the same server connection
        assert b.execute("select current_setting('app.tenant', true)").fetchone() in ((None,), ("",))
        assert b.execute("select count(*) from pg_prepared_statements where name = 'mine'").fetchone() == (0,)
        assert b.execute("select auth.uid()::text").fetchone() == (BOB,)
        assert b.execute("select count(*) from pg_class where relname = 'leftovers'").fetchone() == (0,)


def test_disconnect_inside_transaction_rolls_back(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=3000))
    conn = psycopg.connect(proxy.dsn(token=token_for(ALICE)))
    conn.execute("insert into notes (user_id, title) values (%s, 'uncommitted')", (ALICE,))
    conn.pgconn.finish()  # vanish without COMMIT or Terminate
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as again:
        assert again.execute("select count(*) from notes where title = 'uncommitted'").fetchone() == (0,)
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_pool_exhaustion_gives_53300(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=300))
    with psycopg.connect(proxy.dsn(token=token_for(ALICE))) as alice:
        alice.execute("select 1")  # holds the only server connection (session pooling)
        raw = RawConnection(
            proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(BOB)}"}
        )
        assert raw.greeting[-1] == ("Z", b"I")  # greeted without a server connection
        raw.send(fe.query("select 1"))  # the first query needs one
        fields = error_fields(raw.read())
        raw.close()
        assert (fields["S"], fields["C"]) == ("FATAL", "53300")
        assert "no upstream connection available" in fields["M"]
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as b:  # freed again
        assert b.execute("select 1").fetchone() == (1,)


def test_idle_clients_hold_no_server_connection(make_proxy: Any) -> None:
    """Many more idle clients than pool.max_size: they are all greeted, and active ones still work."""
    proxy = make_proxy(pool=PoolConfig(max_size=2, acquire_timeout_ms=3000))
    idle = [psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) for _ in range(30)]
    try:
        for _ in range(3):
            with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as active:
                assert active.execute("select auth.uid()::text").fetchone() == (BOB,)
        assert proxy.proxy.pool.size <= 2
        assert idle[5].execute("select auth.uid()::text").fetchone() == (ALICE,)  # attaches on first use
    finally:
        for conn in idle:
            conn.close()


def test_first_query_waits_for_a_released_connection(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=5000))
    first = psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True)
    first.execute("select 1")
    second = psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True)  # greeted at once
    threading.Timer(0.3, first.close).start()
    with second:
        assert second.execute("select auth.uid()::text").fetchone() == (BOB,)


def test_waiting_client_gets_released_connection(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=5000))
    first = psycopg.connect(proxy.dsn(token=token_for(ALICE)))
    threading.Timer(0.3, first.close).start()
    start = time.monotonic()
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as b:
        assert b.execute("select auth.uid()::text").fetchone() == (BOB,)
    assert time.monotonic() - start < 4


def test_upstream_down_then_back(make_proxy: Any, pg: Any) -> None:
    proxy = make_proxy()
    pg.stop()
    try:
        raw = RawConnection(
            proxy.port, {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(ALICE)}"}
        )
        fields = error_fields(raw.greeting[-1])
        raw.close()
        assert fields["C"] == "57P03"
        assert "cannot connect to upstream" in fields["M"]
    finally:
        pg.start()
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        assert conn.execute("select count(*) from notes").fetchone() == (3,)


def test_upstream_dies_mid_session(proxy: RunningProxy, pg: Any) -> None:
    conn = psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True)
    pid = conn.execute("select pg_backend_pid()").fetchone()
    assert pid is not None
    pg.psql(f"select pg_terminate_backend({pid[0]})")
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    conn.close()
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as again:  # replaced
        assert again.execute("select count(*) from notes").fetchone() == (3,)


def test_cancel_reaches_only_own_backend(proxy: RunningProxy) -> None:
    # cancel_safe, not cancel: libpq's blocking PQcancel holds the GIL, and this proxy runs in-process.
    with (
        psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as victim,
        psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as other,
    ):
        threading.Timer(0.5, victim.cancel_safe).start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute("select pg_sleep(10)")
        assert time.monotonic() - started < 5
        assert other.execute("select 1").fetchone() == (1,)
        assert victim.execute("select 2").fetchone() == (2,)


def test_cancel_with_wrong_key_is_ignored(proxy: RunningProxy) -> None:
    from rlsproxy.wire.startup import build_cancel_request

    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        key = conn.pgconn.backend_pid

        def bogus_cancel() -> None:
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(build_cancel_request(key, b"\x00\x00\x00\x00"))
            s.close()

        threading.Timer(0.2, bogus_cancel).start()
        assert conn.execute("select pg_sleep(0.6)::text, 1").fetchone() == ("", 1)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x04",  # length too small
        b"\x00\x01\x00\x00" + b"x" * 60,  # over 10,000 bytes announced
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage
        b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00app",  # no terminators
    ],
)
def test_malformed_startup_closed_and_others_unaffected(proxy: RunningProxy, payload: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(payload)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except TimeoutError:
        pass
    s.close()
    assert data.startswith(b"E"), data
    assert b"C08P01" in data
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_stalled_startup_times_out(proxy: RunningProxy) -> None:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.sendall(b"\x00\x00\x00\x50\x00\x03")  # half a startup packet, then nothing
    start = time.monotonic()
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    assert b"timed out" in data
    assert time.monotonic() - start < 5


def test_silent_client_is_timed_out(proxy: RunningProxy) -> None:
    """Connected and sent nothing: no handshake task exists yet; the proxy's sweep ends it."""
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    start = time.monotonic()
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    assert data.startswith(b"E") and b"C08P01\x00Mrlsproxy: startup timed out\x00" in data, data
    assert time.monotonic() - start < 5  # limits.startup_timeout_s is 2 here
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as conn:
        assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)


class _BrokenHandshake:
    """Stands in the proxy's set of handshakes and fails the next sweep once (a bug)."""

    def __init__(self, handshakes: set[Any]) -> None:
        self.handshakes = handshakes

    def startup_overdue(self, now: float) -> bool:
        self.handshakes.discard(self)
        raise RuntimeError("a bug in the sweep")


def test_the_sweep_goes_on_after_a_failure(proxy: RunningProxy, caplog: pytest.LogCaptureFixture) -> None:
    """One failed sweep is logged; the next ones still time silent clients out."""
    handshakes = proxy.proxy.handshakes
    proxy.loop.call_soon_threadsafe(handshakes.add, _BrokenHandshake(handshakes))
    deadline = time.monotonic() + 5
    while "bug in the sweep" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "bug in the sweep for startup and reset timeouts" in caplog.text
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    assert b"C08P01\x00Mrlsproxy: startup timed out\x00" in data, data


def test_usual_handshake_needs_no_task(proxy: RunningProxy) -> None:
    """SSLRequest (no listen.tls), then a startup packet with its token and settings a server was
    greeted with before: the client is greeted from data_received, even when the packet comes in
    two reads. A token as the password gets a task (it waits for the password)."""
    spawned: list[str] = []
    real_spawn = proxy.proxy.spawn

    def spawn(coro: Any) -> Any:
        # ClientConnection._handshake, or in the compiled build its generator class's name
        spawned.append(getattr(coro, "__qualname__", type(coro).__name__))
        return real_spawn(coro)

    proxy.proxy.spawn = spawn  # type: ignore[method-assign]
    try:
        dsn = proxy.dsn(token=token_for(ALICE))
        with psycopg.connect(dsn, autocommit=True) as conn:  # may be the first: learns the greeting
            conn.execute("select 1")
        spawned.clear()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select auth.uid()::text").fetchone() == (ALICE,)
        assert not [name for name in spawned if "_handshake" in name], spawned

        from rlsproxy.wire.startup import build_startup_message

        packet = build_startup_message(
            {"user": "app", "database": "app", "options": f"-c rlsproxy.jwt={token_for(BOB)}"}
        )
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.sendall(packet[:7])
        time.sleep(0.05)
        s.sendall(packet[7:])
        greeting = b""
        while not greeting.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = s.recv(4096)
            assert chunk, greeting
            greeting += chunk
        assert greeting.startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00")  # AuthenticationOk
        s.sendall(fe.TERMINATE)
        s.close()
        assert not [name for name in spawned if "_handshake" in name], spawned

        url = f"postgresql://app:{token_for(BOB)}@127.0.0.1:{proxy.port}/app"
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("select auth.uid()::text").fetchone() == (BOB,)
        assert [name for name in spawned if "_handshake" in name], spawned
    finally:
        del proxy.proxy.spawn


def test_startup_settings_on_a_lazily_attached_connection(proxy: RunningProxy) -> None:
    """The first client with given settings attaches at startup; later ones get them pipelined."""
    options = f"-c TimeZone=Asia/Tokyo -c rlsproxy.jwt={token_for(ALICE)}"
    dsn = f"host=127.0.0.1 port={proxy.port} dbname=app user=app application_name=reports options='{options}'"
    for _ in range(3):
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.info.parameter_status("application_name") == "reports"  # from the greeting
            row = conn.execute(
                "select current_setting('application_name'), current_setting('TimeZone')"
            ).fetchone()
            assert row == ("reports", "Asia/Tokyo")
            assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"


def test_connect_and_leave_takes_no_server_connection(make_proxy: Any) -> None:
    proxy = make_proxy(pool=PoolConfig(max_size=1, acquire_timeout_ms=3000))
    with psycopg.connect(proxy.dsn(token=token_for(ALICE)), autocommit=True) as holder:
        holder.execute("select 1")  # holds the only server connection
        for _ in range(5):  # greeted and gone (what pg_isready-style checks do): never wait for the pool
            psycopg.connect(proxy.dsn(token=token_for(BOB))).close()
        time.sleep(0.2)
        assert proxy.proxy.pool.waiting == 0
        assert proxy.proxy.pool.size == 1


def test_burst_of_clients_with_new_settings_pins_one_server(make_proxy: Any) -> None:
    """Clients whose startup settings no server has answered yet wait for the first one to learn the
    greeting, instead of each attaching (and, idle, keeping) a server connection of their own."""
    import asyncio

    import asyncpg

    proxy = make_proxy(pool=PoolConfig(max_size=3, acquire_timeout_ms=2000))

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(
                asyncpg.connect(
                    host="127.0.0.1",
                    port=proxy.port,
                    user="app",
                    database="app",
                    server_settings={"rlsproxy.jwt": token_for(ALICE), "application_name": "burst-new"},
                    ssl=False,
                )
                for _ in range(30)
            )
        )

    async def run() -> None:
        clients = await burst()
        try:
            assert proxy.proxy.pool.in_use_count <= 1  # only the one that learned the greeting
            # Every idle client may still query: the pool was not pinned by the burst.
            for client in clients[:6]:
                assert await client.fetchval("select auth.uid()::text") == ALICE
                await client.close()
        finally:
            for client in clients:
                if not client.is_closed():
                    await client.close()

    asyncio.run(run())


SETTING_SOURCE = "select source from pg_settings where name = %s"


def wait_until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    """Poll `condition` (the proxy runs in another thread) until true, failing after a generous bound."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting until {what}")
        time.sleep(0.005)


def test_server_connections_start_with_their_clients_settings(make_proxy: Any) -> None:
    """PgBouncer's way: once a server accepted a client's settings, new server connections start with
    them, and later clients with the same settings need no exchange (Postgres says where a value
    came from: "client" is the startup packet, "session" a SET)."""
    proxy = make_proxy(pool=PoolConfig(max_size=3, acquire_timeout_ms=3000))
    dsn = proxy.dsn(token=token_for(ALICE), application_name="reports")
    with psycopg.connect(dsn, autocommit=True) as first:  # new settings: learned by an exchange
        assert first.execute(SETTING_SOURCE, ("application_name",)).fetchone() == ("session",)
    with psycopg.connect(dsn, autocommit=True) as second:  # known good: a connection started with them
        assert second.execute(SETTING_SOURCE, ("application_name",)).fetchone() == ("client",)
        pid = second.execute("select pg_backend_pid()").fetchone()
    # The proxy has taken the disconnect: the connection is being reset, or idle already. Either
    # way the next client with the same settings gets it (Pool.acquire waits for a reset in
    # flight rather than opening another connection).
    wait_until(lambda: proxy.proxy.pool.in_use_count == 0, "the second client's connection is released")
    with psycopg.connect(dsn, autocommit=True) as third:  # and reused as it is
        assert third.execute("select pg_backend_pid()").fetchone() == pid
        assert third.execute(SETTING_SOURCE, ("application_name",)).fetchone() == ("client",)
        third.execute("reset all")
        assert third.execute("show application_name").fetchone() == ("reports",)
        assert third.execute("select auth.uid()::text").fetchone() == (ALICE,)
    # A client without settings of its own never gets a connection started with someone else's.
    with psycopg.connect(proxy.dsn(token=token_for(BOB)), autocommit=True) as plain:
        assert plain.execute("show application_name").fetchone() != ("reports",)


def test_startup_settings_never_leak_to_a_client_that_does_not_set_them(make_proxy: Any) -> None:
    """A connection started with search_path=x cannot serve a client that sets only application_name:
    RESET ALL would keep x. When nothing else is idle and the pool is full it is replaced."""
    proxy = make_proxy(pool=PoolConfig(max_size=2, acquire_timeout_ms=3000))
    options = f"-c search_path=leaky,public -c rlsproxy.jwt={token_for(ALICE)}"
    dsn_a = f"host=127.0.0.1 port={proxy.port} dbname=app user=app application_name=a options='{options}'"
    holder = psycopg.connect(dsn_a, autocommit=True)  # learns the settings, keeps its connection
    try:
        holder.execute("select 1")
        with psycopg.connect(dsn_a, autocommit=True) as second:  # a new connection started with them
            assert second.execute(SETTING_SOURCE, ("search_path",)).fetchone() == ("client",)
            leaky_pid = second.execute("select pg_backend_pid()").fetchone()
        assert proxy.proxy.pool.size == 2  # full: one held, one idle started with search_path=leaky
        with psycopg.connect(proxy.dsn(token=token_for(BOB), application_name="b"), autocommit=True) as b:
            assert b.execute("show search_path").fetchone() == ('"$user", public',)
            assert b.execute("select pg_backend_pid()").fetchone() != leaky_pid
            assert b.execute("select auth.uid()::text").fetchone() == (BOB,)
    finally:
        holder.close()
