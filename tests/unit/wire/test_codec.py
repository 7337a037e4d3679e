"""The protocol codec against hand-written byte fixtures (layouts from the protocol chapter)."""

from __future__ import annotations

import struct

import pytest

from rlsproxy.wire import backend as be
from rlsproxy.wire import codes
from rlsproxy.wire import frontend as fe
from rlsproxy.wire.framing import Carry, FramingError, next_message, startup_packet_length
from rlsproxy.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupError,
    StartupMessage,
    build_cancel_request,
    build_negotiate_protocol_version,
    build_startup_message,
    parse_startup_packet,
)

# What psql 15 sends for `psql "host=... user=app dbname=app options='-c rlsproxy.jwt=t'"`.
PSQL_STARTUP = (
    b"\x00\x00\x00\x4f\x00\x03\x00\x00"
    b"user\x00app\x00database\x00app\x00options\x00-c rlsproxy.jwt=t\x00"
    b"application_name\x00psql\x00\x00"
)


def test_startup_message_fixture() -> None:
    assert startup_packet_length(PSQL_STARTUP) == len(PSQL_STARTUP)
    msg = parse_startup_packet(PSQL_STARTUP)
    assert msg == StartupMessage(
        3,
        0,
        {"user": "app", "database": "app", "options": "-c rlsproxy.jwt=t", "application_name": "psql"},
        (),
    )


def test_startup_round_trip_and_protocol_options() -> None:
    packet = build_startup_message({"user": "u", "_pq_.compression": "on"})
    assert packet[4:8] == b"\x00\x03\x00\x00"
    msg = parse_startup_packet(packet)
    assert isinstance(msg, StartupMessage)
    assert msg.params == {"user": "u"} and msg.protocol_options == ("_pq_.compression",)


def test_newer_minor_version_is_reported() -> None:
    packet = bytearray(build_startup_message({"user": "u"}))
    packet[6:8] = b"\x00\x02"
    msg = parse_startup_packet(bytes(packet))
    assert isinstance(msg, StartupMessage) and (msg.major, msg.minor) == (3, 2)


def test_negotiate_protocol_version_bytes() -> None:
    assert build_negotiate_protocol_version(0, ("_pq_.x",)) == (
        b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00"
    )


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", SSLRequest()),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x30", GSSENCRequest()),
        (
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",
            CancelRequest(12345, b"\xde\xad\xbe\xef"),
        ),
    ],
)
def test_special_requests(packet: bytes, expected: object) -> None:
    assert parse_startup_packet(packet) == expected


def test_cancel_request_round_trip() -> None:
    assert parse_startup_packet(build_cancel_request(7, b"abcd")) == CancelRequest(7, b"abcd")


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00\x00\x00\x09\x00\x02\x00\x00\x00",  # protocol 2
        b"\x00\x00\x00\x0d\x00\x03\x00\x00user",  # no terminators
        b"\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00",  # name without value
        b"\x00\x00\x00\x10\x00\x03\x00\x00\x00x\x00\x00",  # empty name
        b"\x00\x00\x00\x0f\x00\x03\x00\x00u\x00\xff\x00\x00",  # not UTF-8
    ],
)
def test_malformed_startup_packets(packet: bytes) -> None:
    with pytest.raises(StartupError):
        parse_startup_packet(packet)


@pytest.mark.parametrize("length", [0, 7, 10_001, 0x7FFFFFFF])
def test_startup_length_limits(length: int) -> None:
    with pytest.raises(FramingError):
        startup_packet_length(struct.pack("!i", length) + b"\x00" * 4)


def test_startup_length_needs_four_bytes() -> None:
    assert startup_packet_length(b"\x00\x00") == -1


def test_next_message_at_every_split() -> None:
    stream = fe.query("select 1") + fe.SYNC
    first = len(fe.query("select 1"))
    for cut in range(len(stream) + 1):
        part = stream[:cut]
        end = next_message(part, 0, 1 << 20)
        assert end == (first if cut >= first else -1)


@pytest.mark.parametrize("length", [0, 3, 1 << 21])
def test_next_message_rejects_lying_lengths(length: int) -> None:
    with pytest.raises(FramingError):
        next_message(b"Q" + struct.pack("!i", length) + b"xxxx", 0, 1 << 20)


def test_frontend_builders() -> None:
    assert fe.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert fe.SYNC == b"S\x00\x00\x00\x04"
    assert fe.TERMINATE == b"X\x00\x00\x00\x04"
    assert fe.execute() == b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
    assert fe.parse("s", "SELECT $1", (25,)) == b"P\x00\x00\x00\x16s\x00SELECT $1\x00\x00\x01\x00\x00\x00\x19"
    assert fe.bind("s", ("ab", None)) == (
        b"B\x00\x00\x00\x17\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00"
    )


def test_frontend_decoders() -> None:
    assert fe.query_text(fe.query("select 1")[5:]) == b"select 1"
    assert fe.parse_fields(fe.parse("name", "select 2")[5:]) == (b"name", b"select 2")
    assert fe.bind_statement(fe.bind("stmt", (), portal="p")[5:]) == b"stmt"
    describe = b"S" + b"rlsproxy_ctx\x00"
    assert fe.target(describe) == (ord("S"), b"rlsproxy_ctx")
    with pytest.raises(fe.MalformedMessage):
        fe.query_text(b"select 1")
    with pytest.raises(fe.MalformedMessage):
        fe.parse_fields(b"name-without-end")
    with pytest.raises(fe.MalformedMessage):
        fe.target(b"")


def test_backend_builders() -> None:
    assert be.AUTHENTICATION_OK == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert be.AUTHENTICATION_CLEARTEXT_PASSWORD == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert be.ready_for_query(codes.TX_IN_BLOCK) == b"Z\x00\x00\x00\x05T"
    assert be.parameter_status("a", "b") == b"S\x00\x00\x00\x08a\x00b\x00"
    assert be.backend_key_data(1, b"\x00\x00\x00\x02") == b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x02"


def test_error_response_round_trip() -> None:
    raw = be.error_response("42501", "no", severity="FATAL", hint="h", position=3)
    assert raw[0:1] == b"E"
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 1
    assert be.parse_fields(raw[5:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "42501",
        "M": "no",
        "H": "h",
        "P": "3",
    }
    notice = be.error_response("01000", "n", severity="NOTICE", notice=True)
    assert notice[0:1] == b"N"


def test_parameter_status_decoder() -> None:
    assert be.parse_parameter_status(be.parameter_status("TimeZone", "UTC")[5:]) == ("TimeZone", "UTC")


def test_a_kept_message_comes_back_once_its_header_and_then_all_of_it_is_there() -> None:
    """The parser checks the length in the header first (a lying length must fail, not be waited
    for), so a kept header-less tail comes back at 5 bytes; then nothing until the message is whole."""
    message = b"D" + struct.pack("!i", 4 + 10) + b"0123456789"
    for split in range(1, len(message)):
        carry = Carry(kept=message[:split])
        returned_at = []
        for i in range(split, len(message) - 1):  # one byte at a time, the last one comes with more
            resumed = carry.resume(message[i : i + 1], [])
            if resumed is not None:
                returned_at.append(len(resumed[0]))
                carry = Carry(kept=resumed[0])  # what the parser does with an incomplete message
        assert returned_at == ([5] if split < 5 else [])
        assert carry.resume(message[-1:] + b"Z", []) == (message + b"Z", 0)


def test_a_passing_message_goes_out_read_by_read_and_the_next_one_is_parsed() -> None:
    carry = Carry(passing=10)
    out: list[bytes | memoryview] = []
    assert carry.resume(b"0123", out) is None
    assert carry.resume(b"4567", out) is None
    # Two more bytes of it, then the next message: parsing resumes there, the two still to forward.
    assert carry.resume(b"89Zxyz", out) == (b"89Zxyz", 2)
    assert out == [b"0123", b"4567"]
