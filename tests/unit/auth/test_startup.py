"""Startup parameters: the options string, the token and label, and which settings get through."""

from __future__ import annotations

import pytest

from rlsproxy.auth.startup import ALLOWED_SETTINGS, parse_options, read_startup
from rlsproxy.errors import ProxyError


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("", []),
        ("   ", []),
        ("-c search_path=app", [("search_path", "app")]),
        ("-csearch_path=app", [("search_path", "app")]),
        ("--search_path=app", [("search_path", "app")]),
        ("--search-path=app", [("search_path", "app")]),
        ("-c DateStyle=ISO", [("datestyle", "ISO")]),
        (r"-c application_name=my\ app", [("application_name", "my app")]),
        (r"-c application_name=back\\slash", [("application_name", "back\\slash")]),
        ("-c a=1  \t -c b=x=y", [("a", "1"), ("b", "x=y")]),
        ("-c rlsproxy.jwt=", [("rlsproxy.jwt", "")]),
        (
            "-c rlsproxy.jwt=abc.def.ghi --rlsproxy.label=job:x",
            [("rlsproxy.jwt", "abc.def.ghi"), ("rlsproxy.label", "job:x")],
        ),
        ("-c x=trailing\\", [("x", "trailing")]),
    ],
)
def test_parse_options(options: str, expected: list[tuple[str, str]]) -> None:
    assert parse_options(options) == expected


@pytest.mark.parametrize("options", ["-d 5", "-F", "-Fc a=b", "-o x", "-P"])
def test_other_switches_are_refused(options: str) -> None:
    with pytest.raises(ProxyError) as info:
        parse_options(options)
    assert info.value.sqlstate == "42501"
    assert info.value.fatal
    assert f"startup option -{options[1]} is not allowed through rlsproxy" == info.value.message


@pytest.mark.parametrize(
    "options", ["-c", "-c novalue", "-c =x", "--", "--novalue", "stray", "-", "-c a=1 b"]
)
def test_malformed_options(options: str) -> None:
    with pytest.raises(ProxyError) as info:
        parse_options(options)
    assert info.value.sqlstate == "08P01"
    assert info.value.fatal


def test_malformed_option_message_does_not_echo_the_value() -> None:
    with pytest.raises(ProxyError) as info:
        parse_options("-c rlsproxy.jwt=secret.token.value stray-secret")
    assert "secret" not in info.value.message


def test_token_from_direct_parameter() -> None:
    s = read_startup({"user": "app", "rlsproxy.jwt": "a.b.c", "rlsproxy.label": "job:x"})
    assert (s.user, s.database, s.token, s.label, s.anonymous_requested) == (
        "app",
        "app",
        "a.b.c",
        "job:x",
        False,
    )


def test_token_from_options_and_direct_wins() -> None:
    s = read_startup({"user": "u", "database": "db", "options": "-c rlsproxy.jwt=from.options"})
    assert s.token == "from.options"
    assert s.database == "db"
    s = read_startup({"user": "u", "options": "-c rlsproxy.jwt=from.options", "rlsproxy.jwt": "direct"})
    assert s.token == "direct"


def test_empty_jwt_requests_anonymous() -> None:
    s = read_startup({"user": "u", "rlsproxy.jwt": "", "rlsproxy.label": ""})
    assert s.token is None and s.anonymous_requested and s.label is None
    s = read_startup({"user": "u", "options": "-c rlsproxy.jwt="})
    assert s.token is None and s.anonymous_requested


def test_no_jwt_is_not_anonymous_request() -> None:
    s = read_startup({"user": "u"})
    assert s.token is None and not s.anonymous_requested


@pytest.mark.parametrize("params", [{}, {"user": ""}, {"database": "x"}])
def test_user_required(params: dict[str, str]) -> None:
    with pytest.raises(ProxyError) as info:
        read_startup(params)
    assert info.value.sqlstate == "28000"
    assert info.value.fatal
    assert info.value.message == "no PostgreSQL user name specified in startup packet"


@pytest.mark.parametrize("value", ["true", "database", "1", "on", "yes"])
def test_replication_refused(value: str) -> None:
    with pytest.raises(ProxyError) as info:
        read_startup({"user": "u", "replication": value})
    assert info.value.sqlstate == "42501"
    assert info.value.message == "replication connections are not allowed through rlsproxy"


@pytest.mark.parametrize("value", ["false", "off", "0", "no", "FALSE"])
def test_replication_off_is_fine(value: str) -> None:
    assert read_startup({"user": "u", "replication": value}).user == "u"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"role": "postgres"}, "cannot set role at startup: the role comes from the verified token"),
        ({"options": "-c role=postgres"}, "cannot set role at startup"),
        ({"options": "-c ROLE=postgres"}, "cannot set role at startup"),
        ({"session_authorization": "postgres"}, "cannot set session_authorization at startup"),
        ({"request.jwt.claims": "{}"}, "cannot set request.jwt.claims at startup"),
        ({"options": "--request.jwt.claim.sub=x"}, "cannot set request.jwt.claim.sub at startup"),
        ({"rlsproxy.bypass": "1"}, 'unknown rlsproxy startup parameter "rlsproxy.bypass"'),
        ({"row_security": "off"}, 'startup parameter "row_security" is not allowed through rlsproxy'),
        ({"options": "-c session_replication_role=replica"}, '"session_replication_role" is not allowed'),
    ],
)
def test_refused_settings(params: dict[str, str], fragment: str) -> None:
    with pytest.raises(ProxyError) as info:
        read_startup({"user": "u", **params})
    assert info.value.sqlstate == "42501"
    assert info.value.fatal
    assert fragment in info.value.message


def test_unknown_setting_hint_lists_allowed() -> None:
    with pytest.raises(ProxyError) as info:
        read_startup({"user": "u", "log_statement": "all"})
    assert info.value.hint is not None and "search_path" in info.value.hint


def test_allowed_settings_kept_in_order_later_wins() -> None:
    s = read_startup(
        {
            "user": "u",
            "options": "-c search_path=a -c statement_timeout=5s -c search_path=b",
            "DateStyle": "ISO",
            "application_name": "psql",
            "_pq_.some_protocol_option": "x",
        }
    )
    assert s.settings == (
        ("statement_timeout", "5s"),
        ("search_path", "b"),
        ("datestyle", "ISO"),
        ("application_name", "psql"),
    )
    assert s.application_name == "psql"


def test_row_security_not_allowed() -> None:
    assert "row_security" not in ALLOWED_SETTINGS
    assert {"application_name", "client_encoding", "search_path", "timezone"} <= ALLOWED_SETTINGS
