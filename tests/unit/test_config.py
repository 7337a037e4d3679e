"""The YAML configuration loader: every rule reports an exact, key-named problem line."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

import rlsproxy.config._reader
from rlsproxy.config import (
    AuditConfig,
    Config,
    ConfigError,
    HttpConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    PoolConfig,
    ServiceConfig,
    TlsConfig,
    describe,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rlsproxy.yaml"
SECRET = "example-jwt-secret-0123456789-abcdefghij"  # 40 bytes
ENV = {
    "RLSPROXY_JWT_SECRET": SECRET,
    "RLSPROXY_UPSTREAM_PASSWORD": "upstream-pw-4711",
    "RLSPROXY_SERVICE_PASSWORD": "service-pw-0815",
}
MINIMAL: dict[str, Any] = {"jwt": {"secret": "s" * 32}}


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid document, with `sections` merged over it (one level deep)."""
    data = copy.deepcopy(MINIMAL)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name].update(value)
        else:
            data[name] = value
    return data


def problems(data: object, env: dict[str, str] | None = None, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {}, **kwargs)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def write(tmp_path: Path, text: str, name: str = "rlsproxy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The example file


def test_example_loads_with_env_argument() -> None:
    c = load_config(EXAMPLE, ENV)
    assert c.listen == ListenConfig("127.0.0.1", 6432)
    assert c.upstream.database == "app"
    assert c.upstream.user == "authenticator"
    assert c.upstream.password == "upstream-pw-4711"
    assert c.upstream.service_user == "rlsproxy_service"
    assert c.upstream.service_password == "service-pw-0815"
    assert c.jwt.algorithms == ("HS256",)
    assert c.jwt.secret == SECRET
    assert c.jwt.public_keys == ()
    assert c.jwt.jwks_file is None
    assert c.jwt.audience is None
    assert c.jwt.required_claims == ("exp",)
    assert c.roles.allowed == ("anon", "authenticated")
    assert c.services == (
        ServiceConfig(
            name="nightly-sync",
            match=(("sub", "svc:nightly-sync"),),
            roles=("service_role",),
            labels=("job:nightly-*", "seed:*"),
        ),
    )
    assert c.pool == PoolConfig()
    assert c.http == HttpConfig()
    assert c.audit == AuditConfig()
    assert c.limits == LimitsConfig()
    assert c.log == LogConfig()


def test_example_loads_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert load_config(str(EXAMPLE)).jwt.secret == SECRET


def test_example_mentions_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in dataclasses.fields(Config):
        assert f"\n{section.name}:" in text, section.name
        keys = ServiceConfig if section.name == "services" else type(getattr(Config(), section.name))
        for f in dataclasses.fields(keys):
            assert f"  {f.name}:" in text or f"- {f.name}:" in text, f"{section.name}.{f.name}"


def test_example_without_env_names_each_missing_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, {})
    assert info.value.problems == [
        "upstream.password: environment variable RLSPROXY_UPSTREAM_PASSWORD is not set",
        "upstream.service_password: environment variable RLSPROXY_SERVICE_PASSWORD is not set",
        "jwt.secret: environment variable RLSPROXY_JWT_SECRET is not set",
    ]


# ---------------------------------------------------------------------------------------------
# Document shape, unknown keys, files


def test_minimal_document_uses_defaults() -> None:
    c = parse_config(MINIMAL, {})
    assert c == Config(jwt=c.jwt)
    assert c.jwt.secret == "s" * 32


def test_empty_document_needs_a_jwt_secret() -> None:
    assert problems(None) == ["jwt.secret: required because jwt.algorithms includes HS256"]


def test_empty_sections_are_defaults() -> None:
    c = parse_config(minimal(listen=None, pool=None, services=None), {})
    assert c.listen == ListenConfig()
    assert c.services == ()


def test_top_level_must_be_a_mapping() -> None:
    assert problems(["a"]) == ["config: expected a mapping of sections, got a list"]


def test_section_must_be_a_mapping() -> None:
    assert problems(minimal(listen="0.0.0.0")) == ['listen: expected a mapping, got "0.0.0.0"']


def test_unknown_key_with_suggestion() -> None:
    assert problems(minimal(listen={"hostt": "x"})) == ['listen.hostt: unknown key (did you mean "host"?)']


def test_unknown_section_with_suggestion() -> None:
    assert problems(minimal(jtw={})) == ['jtw: unknown key (did you mean "jwt"?)']


def test_unknown_key_without_suggestion_lists_known_keys() -> None:
    assert problems(minimal(log={"zzz": 1})) == [
        "log.zzz: unknown key (expected one of: format, level, connections)"
    ]


def test_unknown_key_in_a_service() -> None:
    service = {"name": "a", "match": {"sub": "x"}, "roles": ["r"], "labels": ["*"], "lables": ["*"]}
    assert problems(minimal(services=[service])) == [
        'services[0].lables: unknown key (did you mean "labels"?)'
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [f"{path}: config file not found"]


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {})
    assert info.value.problems == [f"{tmp_path}: is a directory, not a config file"]


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  host: [1, 2\n  port: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    [line] = info.value.problems
    assert line.startswith(f"{path}: line 3, column 7: invalid YAML: ")
    assert "\n" not in line


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        f"{path}: invalid YAML: cannot decode as utf-8 (invalid start byte) at byte 3"
    ]


def test_yaml_boolean_key_gets_a_hint() -> None:
    assert problems(minimal(log={True: 1})) == [
        "log.True: unknown key (expected one of: format, level, connections); "
        "YAML reads an unquoted on/off/yes/no as true/false"
    ]


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "jwt:\n  secret: " + "a" * 32 + "\nlisten: {}\njwt: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        f"{path}: line 4, column 1: invalid YAML: duplicate key 'jwt' (first defined on line 1)"
    ]


def test_load_config_of_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, "listen:\n  port: 7000\njwt:\n  secret: ${S}\n")
    c = load_config(path, {"S": "k" * 32})
    assert c.listen.port == 7000


# ---------------------------------------------------------------------------------------------
# Environment substitution


def test_several_references_in_one_string() -> None:
    c = parse_config(minimal(upstream={"host": "${A}.${B}.internal"}), {"A": "db", "B": "eu"})
    assert c.upstream.host == "db.eu.internal"


def test_missing_variable_names_key_and_variable() -> None:
    assert problems(minimal(upstream={"password": "pw-${NOPE}"})) == [
        "upstream.password: environment variable NOPE is not set"
    ]


def test_each_missing_variable_is_reported() -> None:
    assert problems(minimal(listen={"host": "${A}${B}"})) == [
        "listen.host: environment variable A is not set",
        "listen.host: environment variable B is not set",
    ]


def test_dollar_dollar_escapes() -> None:
    c = parse_config(minimal(upstream={"password": "a$${B}c${X}"}), {"X": "x", "B": "no"})
    assert c.upstream.password == "a${B}cx"


def test_malformed_reference() -> None:
    assert problems(minimal(listen={"host": "a${b"})) == [
        "listen.host: unclosed ${ (write $${ for a literal ${)"
    ]
    assert problems(minimal(listen={"host": "${not valid}"})) == [
        "listen.host: ${not valid} is not a valid environment variable reference"
    ]


def test_substituted_value_is_not_substituted_again() -> None:
    c = parse_config(minimal(listen={"host": "${A}"}), {"A": "${B}", "B": "x"})
    assert c.listen.host == "${B}"


def test_int_float_and_bool_from_env() -> None:
    env = {"PORT": "7000", "LEEWAY": "2.5", "HTTP": "false", "SIZE": " 5 "}
    c = parse_config(
        minimal(
            listen={"port": "${PORT}"},
            jwt={"leeway_s": "${LEEWAY}"},
            http={"enabled": "${HTTP}"},
            pool={"max_size": "${SIZE}"},
        ),
        env,
    )
    assert (c.listen.port, c.jwt.leeway_s, c.http.enabled, c.pool.max_size) == (7000, 2.5, False, 5)


def test_bad_int_from_env() -> None:
    assert problems(minimal(pool={"max_size": "${N}"}), {"N": "abc"}) == [
        'pool.max_size: expected a positive integer, got "abc"'
    ]


def test_range_checked_after_substitution() -> None:
    assert problems(minimal(listen={"port": "${P}"}), {"P": "0"}) == [
        "listen.port: expected a port number (1-65535), got 0"
    ]


def test_quoted_number_in_file_is_a_string() -> None:
    assert problems(minimal(pool={"max_size": "20"})) == [
        'pool.max_size: expected a positive integer, got "20" (a quoted string; remove the quotes)'
    ]


def test_substitution_in_list_items_and_match_values() -> None:
    service = {"name": "${N}", "match": {"sub": "svc:${N}"}, "roles": ["${R}"], "labels": ["job:${N}"]}
    c = parse_config(minimal(services=[service]), {"N": "sync", "R": "service_role"})
    assert c.services[0] == ServiceConfig("sync", (("sub", "svc:sync"),), ("service_role",), ("job:sync",))


# ---------------------------------------------------------------------------------------------
# Types and ranges


def test_bool_is_not_an_int() -> None:
    assert problems(minimal(pool={"max_size": True})) == [
        "pool.max_size: expected a positive integer, got true"
    ]


def test_type_errors_name_expected_and_found() -> None:
    assert problems(minimal(listen={"host": 5}, http={"enabled": "yes"}, audit={"path": ["x"]})) == [
        "listen.host: expected a string, got 5",
        'http.enabled: expected true or false, got "yes"',
        "audit.path: expected a string, got a list",
    ]


@pytest.mark.parametrize("port", [0, 65536, -1, 1.5])
def test_port_range(port: object) -> None:
    assert problems(minimal(http={"port": port})) == [
        f"http.port: expected a port number (1-65535), got {port}"
    ]


def test_port_bounds_accepted() -> None:
    c = parse_config(minimal(listen={"port": 1}, http={"port": 65535}), {})
    assert (c.listen.port, c.http.port) == (1, 65535)


def test_http_port_clash_with_listen() -> None:
    assert problems(minimal(http={"port": 6432})) == ["http.port: 6432 is also listen.port on the same host"]
    assert parse_config(minimal(http={"port": 6432, "enabled": False}), {}).http.enabled is False


def test_pool_rules() -> None:
    bad = {"mode": "session", "max_size": 0, "acquire_timeout_ms": 0, "idle_timeout_s": 0}
    assert problems(minimal(pool=bad)) == [
        "pool.max_size: expected a positive integer, got 0",
        "pool.acquire_timeout_ms: expected a positive integer, got 0",
        "pool.idle_timeout_s: expected a positive number, got 0",
    ]


def test_transaction_pooling_is_not_available_yet() -> None:
    assert problems(minimal(pool={"mode": "transaction"})) == [
        'pool.mode: "transaction" pooling is not available yet'
    ]


def test_unknown_pool_mode() -> None:
    assert problems(minimal(pool={"mode": "sesion"})) == [
        'pool.mode: expected one of "session", got "sesion" (did you mean "session"?)'
    ]


def test_float_accepts_int() -> None:
    c = parse_config(minimal(pool={"idle_timeout_s": 60}, upstream={"connect_timeout_s": 0.5}), {})
    assert c.pool.idle_timeout_s == 60.0
    assert isinstance(c.pool.idle_timeout_s, float)
    assert c.upstream.connect_timeout_s == 0.5


def test_infinite_number_refused() -> None:
    assert problems(minimal(limits={"startup_timeout_s": float("inf")})) == [
        "limits.startup_timeout_s: expected a positive number, got inf"
    ]


def test_limits_rules() -> None:
    assert problems(minimal(limits={"max_message_bytes": -1, "guard_cache_size": "x"})) == [
        "limits.max_message_bytes: expected a positive integer, got -1",
        'limits.guard_cache_size: expected a positive integer, got "x"',
    ]


def test_empty_strings_refused() -> None:
    assert problems(minimal(upstream={"database": "  "}, audit={"path": ""})) == [
        "upstream.database: must not be empty",
        "audit.path: must not be empty",
    ]


# ---------------------------------------------------------------------------------------------
# jwt


def test_algorithms_none_is_never_accepted() -> None:
    assert problems(minimal(jwt={"algorithms": ["HS256", "none"]})) == [
        'jwt.algorithms[1]: "none" is never accepted'
    ]
    assert problems(minimal(jwt={"algorithms": ["NoNe"]})) == ['jwt.algorithms[0]: "NoNe" is never accepted']


def test_algorithms_unknown_with_suggestion() -> None:
    assert problems(minimal(jwt={"algorithms": ["hs256", "XS1"]})) == [
        'jwt.algorithms[0]: unknown algorithm "hs256" (did you mean "HS256"?)',
        'jwt.algorithms[1]: unknown algorithm "XS1"',
    ]


def test_algorithms_must_be_a_non_empty_list() -> None:
    assert problems(minimal(jwt={"algorithms": []})) == [
        "jwt.algorithms: must not be empty (expected a list of algorithms)"
    ]
    assert problems(minimal(jwt={"algorithms": "HS256"})) == [
        'jwt.algorithms: expected a list of algorithms, got "HS256"'
    ]


def test_algorithm_listed_twice() -> None:
    assert problems(minimal(jwt={"algorithms": ["HS256", "HS256"]})) == [
        'jwt.algorithms[1]: "HS256" is listed twice'
    ]


def test_hs_secret_too_short() -> None:
    assert problems(minimal(jwt={"secret": "x" * 31})) == [
        "jwt.secret: HS256 needs at least 32 bytes of secret, got 31"
    ]


def test_hs_secret_length_counts_utf8_bytes() -> None:
    parse_config(minimal(jwt={"secret": "é" * 16}), {})  # 32 bytes


def test_hs_secret_length_follows_the_strongest_hs_algorithm() -> None:
    assert problems(minimal(jwt={"algorithms": ["HS256", "HS512"], "secret": "x" * 40})) == [
        "jwt.secret: HS512 needs at least 64 bytes of secret, got 40"
    ]


def test_hs_secret_is_never_echoed_in_a_type_error() -> None:
    assert problems(minimal(jwt={"secret": 123456789})) == ["jwt.secret: expected a string, got a number"]


def test_asymmetric_needs_a_key_source() -> None:
    assert problems({"jwt": {"algorithms": ["RS256"]}}) == [
        "jwt.public_keys: RS256 needs a public key: set jwt.public_keys, jwt.jwks_file or jwt.jwks_url"
    ]


def test_mixed_algorithms_need_both_sources() -> None:
    assert problems({"jwt": {"algorithms": ["ES256", "HS256"]}}) == [
        "jwt.secret: required because jwt.algorithms includes HS256",
        "jwt.public_keys: ES256 needs a public key: set jwt.public_keys, jwt.jwks_file or jwt.jwks_url",
    ]


def test_relative_key_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    (conf / "keys").mkdir(parents=True)
    (conf / "keys" / "a.pem").write_text("pem")
    (conf / "jwks.json").write_text("{}")
    path = write(conf, "jwt:\n  algorithms: [RS256]\n  public_keys: [keys/a.pem]\n  jwks_file: jwks.json\n")
    monkeypatch.chdir(tmp_path)  # the relative paths do not exist from here
    c = load_config(path, {})
    assert c.jwt.public_keys == (str(conf / "keys" / "a.pem"),)
    assert c.jwt.jwks_file == str(conf / "jwks.json")


def test_missing_key_files_are_problems(tmp_path: Path) -> None:
    (tmp_path / "dir.pem").mkdir()
    path = write(
        tmp_path, "jwt:\n  algorithms: [EdDSA]\n  public_keys: [gone.pem, dir.pem]\n  jwks_file: x.json\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        f'jwt.public_keys[0]: file "gone.pem" (looked for {tmp_path / "gone.pem"}) does not exist',
        f'jwt.public_keys[1]: "dir.pem" (looked for {tmp_path / "dir.pem"}) is not a file',
        f'jwt.jwks_file: file "x.json" (looked for {tmp_path / "x.json"}) does not exist',
    ]


def test_unreadable_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "k.pem"
    key.write_text("pem")
    key.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the loader's open() fail as it would for others

        def refuse(path: str, *args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(rlsproxy.config._reader, "open", refuse, raising=False)
    assert problems({"jwt": {"algorithms": ["RS256"], "public_keys": [str(key)]}}) == [
        f'jwt.public_keys[0]: cannot read "{key}": Permission denied'
    ]


def test_parse_config_base_dir(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("pem")
    c = parse_config({"jwt": {"algorithms": ["PS256"], "public_keys": ["k.pem"]}}, {}, base_dir=tmp_path)
    assert c.jwt.public_keys == (str(tmp_path / "k.pem"),)


def test_audience_forms() -> None:
    assert parse_config(minimal(jwt={"audience": "api"}), {}).jwt.audience == ("api",)
    assert parse_config(minimal(jwt={"audience": ["a", "b"]}), {}).jwt.audience == ("a", "b")
    assert parse_config(minimal(jwt={"audience": None}), {}).jwt.audience is None


def test_audience_problems() -> None:
    assert problems(minimal(jwt={"audience": []})) == [
        "jwt.audience: an empty list would refuse every token; use null to skip the check"
    ]
    assert problems(minimal(jwt={"audience": ["a", 3]})) == ["jwt.audience[1]: expected a string, got 3"]
    assert problems(minimal(jwt={"audience": {"a": 1}})) == ["jwt.audience: expected a string, got a mapping"]


def test_role_claim_must_be_a_dotted_path() -> None:
    assert parse_config(minimal(jwt={"role_claim": "app_metadata.role"}), {}).jwt.role_claim == (
        "app_metadata.role"
    )
    assert problems(minimal(jwt={"role_claim": "a..b"})) == [
        'jwt.role_claim: expected a dotted claim path like "app_metadata.role", got "a..b"'
    ]
    assert problems(minimal(jwt={"role_claim": ""})) == ["jwt.role_claim: must not be empty"]


def test_required_claims_and_leeway() -> None:
    c = parse_config(minimal(jwt={"required_claims": ["exp", "sub"], "leeway_s": 0}), {})
    assert (c.jwt.required_claims, c.jwt.leeway_s) == (("exp", "sub"), 0.0)
    assert problems(minimal(jwt={"required_claims": "exp", "leeway_s": -1})) == [
        "jwt.leeway_s: expected a number >= 0, got -1",
        'jwt.required_claims: expected a list of claim names, got "exp"',
    ]


# ---------------------------------------------------------------------------------------------
# roles


def test_roles_allowed_must_be_non_empty() -> None:
    assert problems(minimal(roles={"allowed": [], "default": None, "anonymous": None})) == [
        "roles.allowed: must not be empty (expected a list of role names)"
    ]


def test_role_names_are_checked() -> None:
    assert problems(
        minimal(roles={"allowed": ["anon", "authenticated", "pg_read_all_data", "bad role"]})
    ) == [
        'roles.allowed[2]: "pg_read_all_data" is not allowed: role names starting with pg_ are reserved by '
        "PostgreSQL",
        'roles.allowed[3]: "bad role" is not a valid role name (use letters, digits, _ and -, at most 63 '
        "characters)",
    ]


def test_role_listed_twice() -> None:
    assert problems(minimal(roles={"allowed": ["anon", "authenticated", "anon"]})) == [
        'roles.allowed: role "anon" is listed twice'
    ]


def test_default_and_anonymous_must_be_allowed() -> None:
    assert problems(minimal(roles={"allowed": ["user"], "default": "admin", "anonymous": "anon"})) == [
        'roles.default: "admin" is not in roles.allowed',
        'roles.anonymous: "anon" is not in roles.allowed',
    ]


def test_default_and_anonymous_may_be_null() -> None:
    c = parse_config(minimal(roles={"allowed": ["user"], "default": None, "anonymous": None}), {})
    assert (c.roles.allowed, c.roles.default, c.roles.anonymous) == (("user",), None, None)


def test_membership_not_checked_when_allowed_is_broken() -> None:
    assert problems(minimal(roles={"allowed": "anon"})) == [
        'roles.allowed: expected a list of role names, got "anon"'
    ]


# ---------------------------------------------------------------------------------------------
# services


def service(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "sync",
        "match": {"sub": "svc:sync"},
        "roles": ["service_role"],
        "labels": ["*"],
    }
    base.update(overrides)
    return base


def test_service_match_is_sorted_pairs_and_role_may_be_outside_allowed() -> None:
    c = parse_config(minimal(services=[service(match={"sub": "s", "iss": "i", "aud": "a"})]), {})
    assert c.services[0].match == (("aud", "a"), ("iss", "i"), ("sub", "s"))
    assert c.services[0].roles == ("service_role",)
    assert "service_role" not in c.roles.allowed


def test_service_required_keys() -> None:
    assert problems(minimal(services=[{}])) == [
        "services[0].name: required (a service name)",
        "services[0].match: required (a mapping of claim to value)",
        "services[0].roles: required (a list of role names)",
        "services[0].labels: required (a list of label glob patterns)",
    ]


def test_service_value_problems() -> None:
    bad = service(match={}, roles=[], labels=[""])
    assert problems(minimal(services=[bad])) == [
        "services[0].match: must not be empty (a service with no claims to match would match every token)",
        "services[0].roles: must not be empty (expected a list of role names)",
        "services[0].labels[0]: must not be empty",
    ]


def test_service_match_values_must_be_strings() -> None:
    assert problems(minimal(services=[service(match={"sub": 7, "org": ""})])) == [
        "services[0].match.sub: expected a string, got 7",
        "services[0].match.org: must not be empty",
    ]


def test_service_pg_role_refused() -> None:
    assert problems(minimal(services=[service(roles=["pg_write_all_data"])])) == [
        'services[0].roles[0]: "pg_write_all_data" is not allowed: role names starting with pg_ are reserved '
        "by PostgreSQL"
    ]


def test_service_names_unique() -> None:
    assert problems(minimal(services=[service(), service(), service(name="other")])) == [
        'services[1].name: duplicate service name "sync" (also services[0])'
    ]


def test_services_shape() -> None:
    assert problems(minimal(services={"sync": {}})) == [
        "services: expected a list of services, got a mapping"
    ]
    assert problems(minimal(services=[None, "x"])) == [
        "services[0]: expected a mapping, got null",
        'services[1]: expected a mapping, got "x"',
    ]


# ---------------------------------------------------------------------------------------------
# upstream, audit, log


def test_service_password_required_with_service_user() -> None:
    assert problems(minimal(upstream={"service_user": "rlsproxy_service"})) == [
        "upstream.service_password: required when upstream.service_user is set"
    ]


def test_service_password_without_service_user() -> None:
    assert problems(minimal(upstream={"service_password": "x"})) == [
        "upstream.service_password: set but upstream.service_user is not; set both or neither"
    ]


def test_service_user_must_differ_from_user() -> None:
    assert problems(minimal(upstream={"service_user": "authenticator", "service_password": "x"})) == [
        "upstream.service_user: must differ from upstream.user (the service login bypasses RLS)"
    ]


def test_upstream_password_is_optional() -> None:
    assert parse_config(MINIMAL, {}).upstream.password is None


def test_audit_statements() -> None:
    for value in ("none", "fingerprint", "full"):
        assert parse_config(minimal(audit={"statements": value}), {}).audit.statements == value
    assert problems(minimal(audit={"statements": "ful"})) == [
        'audit.statements: expected one of "none", "fingerprint", "full", got "ful" (did you mean "full"?)'
    ]


def test_audit_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    assert parse_config(minimal(audit={"path": "a.jsonl"}), {}, base_dir=tmp_path).audit.path == str(
        tmp_path / "a.jsonl"
    )
    assert parse_config(minimal(audit={"path": "/var/log/a.jsonl"}), {}, base_dir=tmp_path).audit.path == (
        "/var/log/a.jsonl"
    )
    assert parse_config(minimal(audit={"path": "-"}), {}, base_dir=tmp_path).audit.path == "-"


def test_log_format_and_level() -> None:
    c = parse_config(minimal(log={"format": "text", "level": "debug"}), {})
    assert (c.log.format, c.log.level, c.log.connections) == ("text", "DEBUG", True)
    assert parse_config(minimal(log={"connections": False}), {}).log.connections is False
    assert problems(minimal(log={"connections": "sometimes"})) == [
        'log.connections: expected true or false, got "sometimes"'
    ]
    assert problems(minimal(log={"format": "xml", "level": "TRACE"})) == [
        'log.format: expected one of "json", "text", got "xml"',
        'log.level: expected one of "DEBUG", "INFO", "WARNING", "ERROR", got "TRACE"',
    ]


# ---------------------------------------------------------------------------------------------
# Many problems at once


def test_all_problems_in_one_file_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
listen:
  hostt: 0.0.0.0
  port: 99999
upstream:
  password: ${MISSING_PW}
pool:
  mode: transaction
  max_size: abc
jwt:
  algorithms: [HS256, none]
  secret: short
roles:
  allowed: [anon]
  default: authenticated
log:
  level: LOUD
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [
        'listen.hostt: unknown key (did you mean "host"?)',
        "listen.port: expected a port number (1-65535), got 99999",
        "upstream.password: environment variable MISSING_PW is not set",
        'pool.mode: "transaction" pooling is not available yet',
        'pool.max_size: expected a positive integer, got "abc"',
        'jwt.algorithms[1]: "none" is never accepted',
        "jwt.secret: HS256 needs at least 32 bytes of secret, got 5",
        'roles.default: "authenticated" is not in roles.allowed',
        'log.level: expected one of "DEBUG", "INFO", "WARNING", "ERROR", got "LOUD"',
    ]


# ---------------------------------------------------------------------------------------------
# describe() and secrets


def test_describe_summarises_without_secrets() -> None:
    c = load_config(EXAMPLE, ENV)
    text = describe(c)
    for secret in ENV.values():
        assert secret not in text
        assert secret not in repr(c)
    assert "authenticator@127.0.0.1:5432/app (password set)" in text
    assert "service login rlsproxy_service (password set)" in text
    assert "HS256; secret set" in text
    assert (
        "nightly-sync: when sub=svc:nightly-sync -> roles service_role; labels job:nightly-*, seed:*" in text
    )
    assert "audit:     stdout, statements fingerprint" in text


def test_describe_minimal() -> None:
    text = describe(parse_config(minimal(http={"enabled": False}, upstream={"host": "::1"}), {}))
    assert "(password not set)" in text
    assert "[::1]:5432" in text
    assert "http:      disabled" in text
    assert "services:  none" in text
    assert "s" * 32 not in text


def test_problems_never_contain_secret_values() -> None:
    env = {"S": "super-secret-value"}
    lines = problems(
        minimal(jwt={"secret": "${S}"}, upstream={"password": ["${S}"], "service_password": "${S}"}), env
    )
    assert lines == [
        "upstream.password: expected a string, got a list",
        "upstream.service_password: set but upstream.service_user is not; set both or neither",
        "jwt.secret: HS256 needs at least 32 bytes of secret, got 18",
    ]
    assert not any(env["S"] in line for line in lines)


# ---------------------------------------------------------------------------------------------
# TLS, JWKS URL, shutdown


def test_listen_tls_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.crt").write_text("cert")
    (tmp_path / "tls" / "server.key").write_text("key")
    path = write(
        tmp_path,
        "listen:\n  tls: {cert: tls/server.crt, key: tls/server.key, require: true}\n"
        "jwt: {secret: " + "s" * 32 + "}\n",
    )
    c = load_config(path, {})
    assert c.listen.tls == TlsConfig(
        cert=str(tmp_path / "tls" / "server.crt"), key=str(tmp_path / "tls" / "server.key"), require=True
    )
    assert c.listen.allow_cleartext_password_without_tls is False
    assert "TLS required" in describe(c)


def test_listen_tls_defaults() -> None:
    c = parse_config(minimal(listen={"tls": None}), {})
    assert c.listen.tls is None
    assert "no TLS; token as password without TLS: loopback only" in describe(c)


def test_listen_tls_problems(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("cert")
    assert problems(minimal(listen={"tls": {"cert": "c.pem", "require": "yes"}}), base_dir=tmp_path) == [
        "listen.tls.key: required (its PEM private key file)",
        'listen.tls.require: expected true or false, got "yes"',
    ]
    assert problems(
        minimal(listen={"tls": {"cert": "c.pem", "key": "k.pem", "requir": True}}), base_dir=tmp_path
    ) == [
        'listen.tls.requir: unknown key (did you mean "require"?)',
        f'listen.tls.key: file "k.pem" (looked for {tmp_path / "k.pem"}) does not exist',
    ]
    assert problems(minimal(listen={"tls": True})) == ["listen.tls: expected a mapping, got true"]
    assert problems(minimal(listen={"allow_cleartext_password_without_tls": "no"})) == [
        'listen.allow_cleartext_password_without_tls: expected true or false, got "no"'
    ]


def test_upstream_sslmode(tmp_path: Path) -> None:
    assert parse_config(MINIMAL, {}).upstream.sslmode == "prefer"
    (tmp_path / "ca.pem").write_text("ca")
    c = parse_config(
        minimal(upstream={"sslmode": "verify-full", "sslrootcert": "ca.pem"}), {}, base_dir=tmp_path
    )
    assert (c.upstream.sslmode, c.upstream.sslrootcert) == ("verify-full", str(tmp_path / "ca.pem"))
    assert "sslmode verify-full" in describe(c)
    assert problems(minimal(upstream={"sslmode": "allow"})) == [
        'upstream.sslmode: "allow" (plaintext first, TLS if refused) is not supported; use "prefer"'
    ]
    assert problems(minimal(upstream={"sslmode": "verify_full"})) == [
        'upstream.sslmode: expected one of "disable", "prefer", "require", "verify-ca", "verify-full", '
        'got "verify_full" (did you mean "verify-full"?)'
    ]
    assert problems(minimal(upstream={"sslmode": "disable", "sslrootcert": "ca.pem"}), base_dir=tmp_path) == [
        'upstream.sslrootcert: has no effect with upstream.sslmode "disable"'
    ]


def test_jwks_url(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    url = "https://issuer.example.com/.well-known/jwks.json"
    c = parse_config(
        {"jwt": {"algorithms": ["RS256"], "jwks_url": url, "jwks_ca_file": "ca.pem", "jwks_refresh_s": 60}},
        {},
        base_dir=tmp_path,
    )
    assert (c.jwt.jwks_url, c.jwt.jwks_ca_file, c.jwt.jwks_refresh_s) == (url, str(tmp_path / "ca.pem"), 60.0)
    assert f"JWKS {url} (refreshed every 60s)" in describe(c)
    assert parse_config(MINIMAL, {}).jwt.jwks_refresh_s == 300.0


def test_jwks_url_problems(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    assert problems({"jwt": {"algorithms": ["ES256"], "jwks_url": "http://issuer/jwks.json"}}) == [
        'jwt.jwks_url: expected an https:// URL, got "http://issuer/jwks.json" '
        "(keys fetched over plain HTTP could be forged)",
    ]
    assert problems(minimal(jwt={"jwks_ca_file": "ca.pem", "jwks_refresh_s": 0.5}), base_dir=tmp_path) == [
        "jwt.jwks_refresh_s: expected a number >= 1, got 0.5",
        "jwt.jwks_ca_file: set but jwt.jwks_url is not",
    ]
    assert problems(minimal(jwt={"jwks_url": "https://"})) == [
        'jwt.jwks_url: expected an https:// URL with a host, got "https://"'
    ]


def test_shutdown_timeout() -> None:
    assert parse_config(MINIMAL, {}).limits.shutdown_timeout_s == 30.0
    assert parse_config(minimal(limits={"shutdown_timeout_s": 0}), {}).limits.shutdown_timeout_s == 0.0
    assert problems(minimal(limits={"shutdown_timeout_s": -1})) == [
        "limits.shutdown_timeout_s: expected a number >= 0, got -1"
    ]


def test_service_pool_size() -> None:
    assert parse_config(MINIMAL, {}).pool.service_max_size is None
    assert parse_config(minimal(pool={"service_max_size": 3}), {}).pool.service_max_size == 3
    assert problems(minimal(pool={"service_max_size": 0})) == [
        "pool.service_max_size: expected a positive integer, got 0"
    ]
