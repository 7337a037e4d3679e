"""Frontend Bind/Parse decoders and builders used by the in-band identity rewrite."""

from __future__ import annotations

import pytest

from rlsproxy.wire import frontend as fe


def test_bind_parts_round_trip() -> None:
    from rlsproxy.wire.frontend import BindParts, bind_parts, build_bind

    parts = BindParts(b"p1", b"s1", (0, 1), (b"abc", None, b"\x00\x01"), (1,))
    raw = build_bind(parts)
    assert raw[:1] == b"B"
    assert bind_parts(raw[5:]) == parts
    # the text-only builder and the full decoder agree
    assert bind_parts(fe.bind("st", ("x", None), portal="po")[5:]) == BindParts(
        b"po", b"st", (), (b"x", None), ()
    )


def test_bind_parts_rejects_truncation() -> None:
    from rlsproxy.wire.frontend import MalformedMessage, bind_parts

    body = fe.bind("st", ("abcdef",))[5:]
    for cut in (3, 6, len(body) - 3, len(body) - 1):
        with pytest.raises(MalformedMessage):
            bind_parts(body[:cut])


def test_parse_param_types() -> None:
    from rlsproxy.wire.frontend import parse_param_types

    assert parse_param_types(fe.parse("n", "select $1, $2", (25, 0))[5:]) == (25, 0)
    assert parse_param_types(fe.parse("", "select 1")[5:]) == ()
