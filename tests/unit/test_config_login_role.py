"""upstream.accept_unsafe_login_role: off by default, a boolean, shown by check-config when on."""

from __future__ import annotations

import pytest

from rlsproxy.config import ConfigError, describe, parse_config

JWT = {"secret": "s" * 32}


def test_accept_unsafe_login_role() -> None:
    assert parse_config({"jwt": JWT}, {}).upstream.accept_unsafe_login_role is False
    on = parse_config({"jwt": JWT, "upstream": {"accept_unsafe_login_role": True}}, {})
    assert on.upstream.accept_unsafe_login_role is True
    assert "UNSAFE login role accepted" in describe(on)
    assert "UNSAFE" not in describe(parse_config({"jwt": JWT}, {}))
    with pytest.raises(ConfigError) as info:
        parse_config({"jwt": JWT, "upstream": {"accept_unsafe_login_role": "yes please"}}, {})
    assert info.value.problems[0].startswith("upstream.accept_unsafe_login_role: ")
