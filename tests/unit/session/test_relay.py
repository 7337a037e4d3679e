"""The sans-IO session machines on byte fixtures: what goes upstream, what the client sees.

The integration tests run the same paths against a real Postgres; these pin the exact bytes.
"""

from __future__ import annotations

import pytest

from rlsproxy.errors import ProxyError
from rlsproxy.session import context
from rlsproxy.session.expected import CTX_PREPARED, CTX_UNKNOWN, CTX_UNPREPARED
from rlsproxy.session.guard import Guard
from rlsproxy.session.in_band import SET_CONFIG_SQL, payload
from rlsproxy.session.relay import PLAIN, PLAIN_ENDS, PLAIN_NO_CONTEXT, Classifier, Relay
from rlsproxy.session.server import Chunks, ServerState
from rlsproxy.session.simple import translate
from rlsproxy.wire import backend as be
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe

ROLE, CLAIMS = "authenticated", '{"sub":"a"}'
PREFIX = context.context_prefix(ROLE, CLAIMS)
DESCRIBE_PORTAL = be.message(codes.DESCRIBE, b"P\0")

PARSE_COMPLETE = be.message(codes.PARSE_COMPLETE, b"")
BIND_COMPLETE = be.message(codes.BIND_COMPLETE, b"")
CONTEXT_ROW = be.message(codes.DATA_ROW, b"\0\x02" + b"\0\0\0\x01r" + b"\0\0\0\x01c")
SELECT_1 = be.message(codes.COMMAND_COMPLETE, b"SELECT 1\0")
ROW_DESCRIPTION = be.message(
    codes.ROW_DESCRIPTION, b"\0\x01x\0" + b"\0" * 6 + b"\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"
)
ROW = be.message(codes.DATA_ROW, b"\0\x01\0\0\0\x011")
READY_IDLE = be.ready_for_query(codes.TX_IDLE)
READY_IN_TX = be.ready_for_query(codes.TX_IN_BLOCK)
# What Postgres answers to the prefix: Bind, then the row of set_config values and its tag.
PREFIX_REPLY = BIND_COMPLETE + CONTEXT_ROW + SELECT_1


def make_relay(*, in_band: bool = False) -> tuple[Relay, ServerState]:
    check = (lambda token: ("authenticated", '{"sub":"b"}')) if in_band else None
    relay = Relay(PREFIX, Classifier(Guard(0)), max_message=1 << 20, in_band=check)
    state = ServerState({}, 1, b"k")
    state.ctx = CTX_PREPARED
    relay.attach(state)
    return relay, state


def from_client(relay: Relay, data: bytes) -> tuple[bytes, bytes]:
    to_server: Chunks = []
    to_client: Chunks = []
    relay.feed_client(data, to_server, to_client)
    return b"".join(to_server), b"".join(to_client)


def from_server(relay: Relay, data: bytes) -> tuple[bytes, bytes]:
    to_client: Chunks = []
    to_server: Chunks = []
    relay.feed_server(data, to_client, to_server)
    return b"".join(to_client), b"".join(to_server)


def extended(sql: str, *params: str) -> bytes:
    return fe.parse("", sql) + fe.bind("", params) + DESCRIBE_PORTAL + fe.execute() + fe.SYNC


def test_extended_batch_goes_behind_the_prefix_unchanged() -> None:
    relay, _ = make_relay()
    batch = extended("select x from t where id = $1", "7")
    upstream, to_client = from_client(relay, batch)
    assert upstream == PREFIX.plain + batch
    assert to_client == b""
    reply = PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ROW + SELECT_1 + READY_IDLE
    seen, back = from_server(relay, PREFIX_REPLY + reply)
    assert seen == reply  # the prefix's replies swallowed, the client's forwarded as they came
    assert back == b""
    assert (relay.statements, relay.transactions) == (1, 1)


def test_replies_split_anywhere_give_the_same_bytes() -> None:
    relay, _ = make_relay()
    from_client(relay, extended("select 1"))
    stream = PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ROW + SELECT_1 + READY_IDLE
    seen = b""
    for i in range(0, len(stream), 3):
        seen += from_server(relay, stream[i : i + 3])[0]
    assert seen == stream[len(PREFIX_REPLY) :]


def test_a_repeated_prefix_reply_is_skipped_whole_and_anything_else_read_message_by_message() -> None:
    relay, state = make_relay()
    reply = PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ROW + SELECT_1 + READY_IDLE
    from_client(relay, extended("select 1"))
    assert from_server(relay, PREFIX_REPLY + reply)[0] == reply
    assert state._prefix_reply == PREFIX_REPLY  # learned from the first transaction
    from_client(relay, extended("select 1"))
    assert from_server(relay, PREFIX_REPLY + reply)[0] == reply
    # Another identity's row: not the learned bytes, read message by message, and learned instead.
    other_row = be.message(codes.DATA_ROW, b"\0\x02" + b"\0\0\0\x01s" + b"\0\0\0\x01d")
    from_client(relay, extended("select 1"))
    assert from_server(relay, BIND_COMPLETE + other_row + SELECT_1 + reply)[0] == reply
    assert state._prefix_reply == BIND_COMPLETE + other_row + SELECT_1
    # A notice between the prefix's replies goes to the client and is not learned.
    notice = be.message(codes.NOTICE_RESPONSE, b"SNOTICE\0Mhello\0\0")
    from_client(relay, extended("select 1"))
    seen, _ = from_server(relay, BIND_COMPLETE + notice + CONTEXT_ROW + SELECT_1 + reply)
    assert seen == notice + reply
    assert state._prefix_reply == BIND_COMPLETE + other_row + SELECT_1
    # A prefix failing at Execute, then one that succeeds in the same read: only the second is learned.
    error = be.error_response("42704", 'role "x" does not exist')
    from_client(relay, extended("select 1") + extended("select 2"))
    seen, _ = from_server(relay, BIND_COMPLETE + error + READY_IDLE + PREFIX_REPLY + reply)
    assert seen == error + READY_IDLE + reply
    assert state._prefix_reply == PREFIX_REPLY
    assert not state.pending


def test_a_large_row_is_passed_on_as_it_arrives_and_never_held_whole() -> None:
    relay, state = make_relay()
    from_client(relay, extended("select big"))
    row = be.message(codes.DATA_ROW, b"\0\x01" + (200_000).to_bytes(4, "big") + b"x" * 200_000)
    stream = PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + row + SELECT_1 + READY_IDLE
    seen = b""
    for i in range(0, len(stream), 4096):
        got = from_server(relay, stream[i : i + 4096])[0]
        if len(PREFIX_REPLY) + 60_000 < i < len(stream) - 4096:
            assert len(got) == 4096  # every read of the row goes on at once
        seen += got
    assert seen == stream[len(PREFIX_REPLY) :]
    assert not state.pending and state.tx_status == codes.TX_IDLE


def test_a_large_message_that_must_be_read_whole_is_joined_once() -> None:
    relay, _ = make_relay()
    sql = "select " + "1 + " * 80_000 + "1"
    batch = fe.parse("", sql) + fe.bind("", ()) + DESCRIBE_PORTAL + fe.execute() + fe.SYNC
    upstream = b""
    for i in range(0, len(batch), 1000):
        upstream += from_client(relay, batch[i : i + 1000])[0]
    assert upstream == PREFIX.plain + batch  # the guard saw the whole text; the bytes are unchanged


def test_a_large_bind_is_passed_on_as_it_arrives_behind_its_prefix() -> None:
    relay, _ = make_relay()
    batch = fe.parse("", "select $1") + fe.bind("", ("p" * 300_000,)) + fe.execute() + fe.SYNC
    upstream = b""
    for i in range(0, len(batch), 8192):
        got = from_client(relay, batch[i : i + 8192])[0]
        if i == 0:
            assert got == PREFIX.plain + batch[:8192]  # the prefix first, then the Bind so far
        elif i < len(batch) - 8192:
            assert len(got) == 8192
        upstream += got
    assert upstream == PREFIX.plain + batch
    assert (relay.statements, relay.transactions) == (1, 1)


def test_large_copy_data_from_the_client_is_passed_on_as_it_arrives() -> None:
    relay, state = make_relay()
    upstream, _ = from_client(relay, fe.query("copy t from stdin"))
    assert upstream.endswith(translate(b"copy t from stdin").messages)  # its Sync waits for CopyDone
    copy_in = be.message(codes.COPY_IN_RESPONSE, b"\0\0\0")
    from_server(relay, PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + copy_in)
    data = be.message(codes.COPY_DATA, b"r" * 300_000)
    stream = data + be.message(codes.COPY_DONE, b"")
    sent = b""
    for i in range(0, len(stream), 8192):
        got = from_client(relay, stream[i : i + 8192])[0]
        if 0 < i < len(data) - 8192:
            assert len(got) == 8192
        sent += got
    assert sent == stream + fe.SYNC  # the proxy's Sync after the client's CopyDone
    seen, _ = from_server(relay, be.message(codes.COMMAND_COMPLETE, b"COPY 1\0") + READY_IDLE)
    assert seen.endswith(READY_IDLE) and not state.pending


def test_no_prefix_inside_an_open_transaction() -> None:
    """BEGIN needs no context and goes alone (its snapshot rules: BEGIN ISOLATION LEVEL); the first
    statement of the transaction gets the prefix, later ones run in the context it set."""
    relay, state = make_relay()
    begin = extended("begin")
    assert from_client(relay, begin)[0] == begin
    from_server(relay, PARSE_COMPLETE + BIND_COMPLETE + SELECT_1 + READY_IN_TX)
    assert state.tx_status == codes.TX_IN_BLOCK
    first = extended("select 1")
    assert from_client(relay, first)[0] == PREFIX.plain + first
    from_server(relay, PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + SELECT_1 + READY_IN_TX)
    batch = extended("select 2")
    assert from_client(relay, batch)[0] == batch


def test_simple_query_is_translated_and_the_extra_replies_dropped() -> None:
    relay, _ = make_relay()
    sql = b"select 1"
    upstream, _ = from_client(relay, fe.query(sql.decode()))
    assert upstream == PREFIX.plain + translate(sql).messages + fe.SYNC
    seen, _ = from_server(
        relay, PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + ROW + SELECT_1 + READY_IDLE
    )
    assert seen == ROW_DESCRIPTION + ROW + SELECT_1 + READY_IDLE  # what a simple Query gets


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        b"  update t set x = 'a' where id = 1 ;; \n",
        b"BEGIN",
        b"commit;",
        b"WITH w AS (SELECT 1) SELECT * FROM w",
        b"select $x$ text $x$",
    ],
)
def test_plain_statement_is_sent_as_the_translation_would(sql: bytes) -> None:
    """The short path (a PLAIN verdict, no Translation) writes the same bytes as translate();
    transaction control goes without the prefix (it needs no context)."""
    relay, _ = make_relay()
    verdict = Classifier(Guard(0)).query_verdict(sql)
    assert verdict in (PLAIN, PLAIN_NO_CONTEXT, PLAIN_ENDS)
    upstream, _ = from_client(relay, fe.query(sql.decode()))
    prefix = b"" if verdict.flow else PREFIX.plain
    assert upstream == prefix + translate(sql).messages + fe.SYNC


@pytest.mark.parametrize(
    "sql", [b"COPY t FROM STDIN", b"select 1; select 2", b"SET role x", b"select set_config('a', 'b', true)"]
)
def test_only_plain_single_statements_get_the_short_path(sql: bytes) -> None:
    assert Classifier(Guard(0)).query_verdict(sql) is not PLAIN


def test_context_statement_is_prepared_once_and_again_when_unsure() -> None:
    relay, state = make_relay()
    state.ctx = CTX_UNPREPARED
    assert from_client(relay, extended("select 1"))[0].startswith(context.PLAIN.parse + PREFIX.plain)
    from_server(relay, PARSE_COMPLETE + PREFIX_REPLY + PARSE_COMPLETE + BIND_COMPLETE + SELECT_1 + READY_IDLE)
    assert from_client(relay, extended("select 1"))[0].startswith(PREFIX.plain)
    state.forget_context()
    assert (state.ctx, state.ctx_keeping) == (CTX_UNKNOWN, CTX_UNKNOWN)
    upstream = from_client(relay, fe.SYNC + extended("select 1"))[0]
    assert context.PLAIN.close + context.PLAIN.parse + PREFIX.plain in upstream


def test_keeping_statement_only_behind_unanswered_messages_after_a_switch() -> None:
    relay, state = make_relay(in_band=True)
    state.ctx_keeping = CTX_PREPARED
    # Before any switch: pipelined batches get the plain statement.
    upstream, _ = from_client(relay, extended("select 1") + extended("select 2"))
    assert upstream.count(PREFIX.plain) == 2 and PREFIX.keeping not in upstream
    relay2, state2 = make_relay(in_band=True)
    state2.ctx_keeping = CTX_PREPARED
    upstream, _ = from_client(
        relay2, extended("select set_config('rlsproxy.jwt', $1, true)", "token") + extended("select 2")
    )
    # The switch is the transaction's context: no prefix before it; the next batch is pipelined
    # behind it, so its prefix is the one that keeps the switch.
    assert PREFIX.plain not in upstream
    assert upstream.count(PREFIX.keeping) == 1


def test_in_band_parse_and_bind_are_rewritten_with_the_verified_payload() -> None:
    relay, _ = make_relay(in_band=True)
    upstream, _ = from_client(relay, extended("select set_config('rlsproxy.jwt', $1, true)", "the-token"))
    expected = (
        fe.parse("rlsproxy_ib_1", SET_CONFIG_SQL)  # no type declared by the client: none declared for it
        + fe.bind("rlsproxy_ib_1", (payload("authenticated", '{"sub":"b"}', "the-token"),))
        + DESCRIBE_PORTAL
        + fe.execute()
        + fe.SYNC
    )
    assert upstream == expected
    assert b"set_config('rlsproxy.jwt'" not in upstream  # the client's statement never runs


def test_the_proxys_switch_statement_never_exists_under_a_name_the_client_can_bind() -> None:
    """The client names its in-band statement s1 (or leaves it unnamed): Postgres only ever gets the
    proxy's statement under a reserved name, so a later Bind of s1 or of the unnamed statement with
    the client's own payload cannot reach it."""
    relay, state = make_relay(in_band=True)
    switch = "select set_config('rlsproxy.jwt', $1, true)"
    for name in ("s1", ""):
        upstream, _ = from_client(
            relay,
            fe.parse(name, switch) + fe.bind(name, ("tok",)) + fe.execute() + fe.SYNC + fe.query("select 1"),
        )
        parses = [body for t, body in _messages(upstream) if t == codes.PARSE]
        for body in parses:
            stmt, sql = fe.parse_fields(body)
            if SET_CONFIG_SQL.encode() == sql:
                assert stmt.startswith(b"rlsproxy_ib_"), stmt
        assert not any(fe.parse_fields(b)[0] == b"s1" for b in parses)
        state.pending.clear()


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append((data[pos], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def test_in_band_statement_describe_and_close_point_at_the_proxys_statement() -> None:
    relay, _ = make_relay(in_band=True)
    from_client(relay, fe.parse("s1", "select set_config('rlsproxy.jwt', $1, true)") + fe.SYNC)
    upstream, _ = from_client(relay, be.message(codes.DESCRIBE, b"Ss1\0") + fe.SYNC)
    assert be.message(codes.DESCRIBE, b"Srlsproxy_ib_1\0") in upstream
    upstream, _ = from_client(relay, be.message(codes.CLOSE, b"Ss1\0") + fe.SYNC)
    assert be.message(codes.CLOSE, b"Srlsproxy_ib_1\0") in upstream
    upstream, _ = from_client(relay, fe.bind("s1", ("x",)) + fe.SYNC)  # closed: an ordinary name again
    assert fe.bind("s1", ("x",)) in upstream


def test_a_name_in_use_by_an_in_band_statement_is_refused_as_postgres_would() -> None:
    relay, _ = make_relay(in_band=True)
    from_client(relay, fe.parse("s1", "select set_config('rlsproxy.jwt', $1, true)") + fe.SYNC)
    upstream, _ = from_client(relay, fe.parse("s1", "select 1") + fe.SYNC)
    assert context.REFUSAL_PARSE in upstream and b"select 1" not in upstream


def test_an_unnamed_switch_statement_is_prepared_once_per_server_connection() -> None:
    """psycopg sends its first executions unnamed, one Parse per transaction: the proxy's statement
    is prepared once and the client's Parse gets its ParseComplete from an empty unnamed one."""
    relay, state = make_relay(in_band=True)
    switch = "select set_config('rlsproxy.jwt', $1, true)"
    first, _ = from_client(relay, extended(switch, "tok"))
    assert fe.parse("rlsproxy_ib_1", SET_CONFIG_SQL) in first
    state.pending.clear()  # (replies not played here: the batch is simply over)
    again, _ = from_client(relay, extended(switch, "tok"))
    assert again.startswith(
        fe.parse("", "") + fe.bind("rlsproxy_ib_1", (payload("authenticated", '{"sub":"b"}', "tok"),))
    )
    assert SET_CONFIG_SQL.encode() not in again
    state.pending.clear()
    state.forget_context()  # e.g. DISCARD ALL: prepared again
    assert fe.parse("rlsproxy_ib_2", SET_CONFIG_SQL) in from_client(relay, extended(switch, "tok"))[0]


@pytest.mark.parametrize(
    "message",
    [
        be.message(codes.BIND, b"\0rlsproxy_ctx\0\0\0\0\0\0\0"),
        be.message(codes.DESCRIBE, b"Srlsproxy_ctx\0"),
        be.message(codes.CLOSE, b"SRLSPROXY_CTX\0"),
        fe.parse("rlsproxy_mine", "select 1"),
        fe.parse("Rlsproxy_Mine", "select 1"),
        be.message(codes.BIND, b"\0RLSPROXY_ctx\0\0\0\0\0\0\0"),
    ],
)
def test_reserved_statement_names_are_refused(message: bytes) -> None:
    relay, _ = make_relay()
    upstream, _ = from_client(relay, message + fe.SYNC)
    assert context.REFUSAL_PARSE in upstream  # a placeholder that fails, so Postgres skips to Sync
    assert b"rlsproxy_ctx\0\0" not in upstream.split(context.REFUSAL_PARSE)[1]
    error = be.message(
        codes.ERROR_RESPONSE, b'SERROR\0C42601\0Msyntax error at or near "RLSPROXY_REFUSED"\0\0'
    )
    seen, _ = from_server(relay, error + READY_IDLE)  # a refusal opens its batch without a prefix
    fields = be.parse_fields(seen[5 : 1 + int.from_bytes(seen[1:5], "big")])
    assert fields["C"] == "42501" and "reserved" in fields["M"]
    assert seen.endswith(READY_IDLE)


def test_refused_parse_is_replaced_and_reported() -> None:
    relay, _ = make_relay()
    upstream, _ = from_client(relay, extended("set role postgres"))
    assert context.REFUSAL_PARSE in upstream and b"set role" not in upstream


def test_malformed_length_is_a_protocol_violation() -> None:
    relay, _ = make_relay()
    with pytest.raises(ProxyError):
        from_client(relay, b"P\x00\x00\x00\x02")


def test_the_message_limit_applies_to_what_the_proxy_must_hold_whole() -> None:
    def small_relay() -> Relay:
        relay = Relay(PREFIX, Classifier(Guard(0)), max_message=100_000)
        state = ServerState({}, 1, b"k")
        state.ctx = CTX_PREPARED
        relay.attach(state)
        return relay

    batch = fe.parse("", "select $1") + fe.bind("", ("b" * 300_000,)) + fe.execute() + fe.SYNC
    relay = small_relay()
    upstream = b"".join(from_client(relay, batch[i : i + 65536])[0] for i in range(0, len(batch), 65536))
    assert upstream == PREFIX.plain + batch  # passed on read by read: never held, so allowed
    too_long = fe.parse("", "select '" + "p" * 300_000 + "'") + fe.SYNC
    with pytest.raises(ProxyError, match="larger than the proxy's limit of 100000"):
        from_client(small_relay(), too_long[:65536])  # a Parse must be held whole for the guard
    reserved = fe.bind("rlsproxy_ctx", ("b" * 300_000,))
    with pytest.raises(ProxyError, match=r"limits\.max_message_bytes"):
        from_client(small_relay(), reserved[:65536])  # a Bind that is not passed on unchanged


def test_lost_connection_ends_the_proxys_own_exchanges_with_an_error() -> None:
    state = ServerState({}, 1, b"k")
    ended: list[list[dict[str, str]]] = []
    state.internal(fe.query("DISCARD ALL"), lambda entry: ended.append(entry.errors))
    state.lost()
    assert ended == [[{"C": "08006", "M": "upstream connection lost"}]]
    assert not state.pending


def test_internal_exchange_replies_are_swallowed_and_end_it() -> None:
    relay, state = make_relay()
    ended: list[int] = []
    upstream = state.internal(fe.query("DISCARD ALL"), lambda entry: ended.append(len(entry.errors)))
    assert upstream == fe.query("DISCARD ALL")
    status = be.parameter_status("application_name", "x")
    seen, _ = from_server(relay, status + be.message(codes.COMMAND_COMPLETE, b"DISCARD ALL\0") + READY_IDLE)
    # ParameterStatus belongs to the client whoever caused it (a startup setting, say), and is noted.
    assert seen == status and ended == [0]
    assert state.params["application_name"] == "x"


def test_the_classifier_keeps_what_comes_again_and_what_is_costly() -> None:
    classifier = Classifier(Guard(0), max_entries=3)
    one_offs = [f"select abalance from pgbench_accounts where aid = {i}".encode() for i in range(10)]
    costly = b"do $$ begin perform 1; end $$"
    assert classifier.query_verdict(costly).action == "allow"  # a full parse: kept
    for sql in one_offs:  # literal values, allowed from the text alone: not kept, nothing evicted
        assert classifier.query_verdict(sql).action == "allow"
    assert classifier.query_verdict(b"BEGIN").action == "allow"  # no values in it: kept
    assert list(classifier._cache) == [costly, b"BEGIN"]
    assert classifier.query_verdict(b"set role postgres").action == "refuse"
    assert b"set role postgres" in classifier._cache
    # A Parse's text has placeholders and comes again: kept whatever decided it.
    assert classifier.verdict(b"select 1 where $1 = 2").action == "allow"
    assert b"select 1 where $1 = 2" in classifier._cache and costly not in classifier._cache  # FIFO
