"""``rlsproxy doctor``: check a database's RLS posture before it leaks.

    rlsproxy doctor --dsn postgresql://admin@db/app --config config/rlsproxy.yaml \\
        [--schema public ...] [--format text|json] [--fail-on error|warning|info]

Exit status: 0 when nothing at or above --fail-on (default error) was found, 1 otherwise,
2 for usage, configuration or connection errors. Also ``python -m rlsproxy.doctor.cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping
from typing import cast

import psycopg

from rlsproxy.config import Config, ConfigError, load_config
from rlsproxy.doctor.base import SEVERITIES, Severity
from rlsproxy.doctor.checks import DoctorError, examine
from rlsproxy.doctor.report import to_json, to_text

PROG = "rlsproxy doctor"
USAGE_ERROR = 2
# Stands in for environment variables the config uses but the doctor's environment lacks (secrets,
# mostly): 64 characters, so HMAC secret length checks pass.
_PLACEHOLDER = "rlsproxy-doctor-placeholder-".ljust(64, "x")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default="",
        help="libpq connection string or URI of a role that can read the whole catalog, e.g. "
        "postgresql://admin@db/app (default: the PG* environment variables)",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("RLSPROXY_CONFIG"),
        help="rlsproxy YAML file (default: $RLSPROXY_CONFIG)",
    )
    parser.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="NAME",
        help="an exposed schema to examine (repeatable; default: every non-system schema an end-user role "
        "has USAGE on)",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="error",
        help="exit 1 when a finding at or above this severity exists (default error)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Check a database's RLS posture before it leaks.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments (what the ``rlsproxy doctor`` subcommand calls)."""
    if not args.config:
        return _fail("--config is required (or set RLSPROXY_CONFIG)")
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _fail(f"{args.config}: {len(exc.problems)} problem(s):\n  " + "\n  ".join(exc.problems))
    try:
        with psycopg.connect(args.dsn, autocommit=True, application_name="rlsproxy doctor") as conn:
            report = examine(conn, config, args.schema)
    except DoctorError as exc:
        return _fail(str(exc))
    except psycopg.OperationalError as exc:
        return _fail(f"cannot connect: {_one_line(exc)}")
    except psycopg.Error as exc:
        return _fail(f"reading the catalog failed: {_one_line(exc)}")
    if args.format == "json":
        sys.stdout.write(to_json(report))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        sys.stdout.write(to_text(report, colour=colour))
    return 1 if report.fails(cast(Severity, args.fail_on)) else 0


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return USAGE_ERROR


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _LenientEnv(Mapping[str, str]):
    """The environment, with a placeholder for every variable it lacks (remembered in ``missing``)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.missing: set[str] = set()

    def __getitem__(self, key: str) -> str:
        if key in self._env:
            return self._env[key]
        self.missing.add(key)
        return _PLACEHOLDER

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def _load(path: str) -> Config:
    """The config, without needing its secrets.

    Refuses if a value the doctor reads (role names) needs an environment variable that is not set.
    """
    env = _LenientEnv(os.environ)
    config = load_config(path, env)
    read = [config.upstream.user, config.upstream.service_user or "", *config.roles.allowed]
    read += [config.roles.anonymous or ""] + [r for s in config.services for r in s.roles]
    if any(_PLACEHOLDER in value for value in read):
        names = ", ".join(sorted(env.missing))
        raise ConfigError([f"the role names depend on environment variables that are not set: {names}"])
    return config


if __name__ == "__main__":
    sys.exit(main())
