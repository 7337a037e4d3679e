"""Command line: serve, check-config, token (mint a dev token), doctor (check a database's RLS posture)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from rlsproxy import __version__

DEFAULT_CONFIG = "/etc/rlsproxy/rlsproxy.yaml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("RLSPROXY_CONFIG") or DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rlsproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help=f"YAML file (default: $RLSPROXY_CONFIG or {DEFAULT_CONFIG})")

    check = sub.add_parser("check-config", help="validate a config file and name every problem")
    check.add_argument("path", nargs="?", metavar="PATH", help="YAML file (the same as --config PATH)")
    check.add_argument("--config", help=f"YAML file (default: $RLSPROXY_CONFIG or {DEFAULT_CONFIG})")

    token = sub.add_parser("token", help="mint a development token (HS256)")
    token.add_argument("--secret", default=os.environ.get("RLSPROXY_JWT_SECRET"), help="HS secret")
    token.add_argument("--sub", help="subject (user id)")
    token.add_argument("--role", help="role claim")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until expiry")
    token.add_argument("--claim", action="append", default=[], metavar="K=V", help="extra string claim")

    doctor = sub.add_parser(
        "doctor",
        help="check a database's RLS posture against a config",
        description="Check a database's RLS posture before it leaks. Exit 0 when nothing at or above "
        "--fail-on was found, 1 otherwise, 2 for usage, configuration or connection errors.",
    )
    from rlsproxy.doctor.cli import add_arguments as doctor_arguments

    doctor_arguments(doctor)

    args = parser.parse_args(argv)
    if args.command == "doctor":
        from rlsproxy.doctor.cli import run as run_doctor

        return run_doctor(args)
    if args.command == "check-config":
        if args.path and args.config and args.path != args.config:
            check.error("give the file once: PATH or --config PATH")
        return _check_config(_config_path(args.path or args.config))
    if args.command == "token":
        return _token(args)
    return _serve(_config_path(args.config))


def _check_config(path: str) -> int:
    from rlsproxy.config import ConfigError, describe, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        return _problems(f"{path}: {len(exc.problems)} problem(s):", exc.problems)
    print(f"{path}: OK")
    print(describe(config))
    return 0


def _token(args: argparse.Namespace) -> int:
    from rlsproxy.auth.mint import mint_token

    if not args.secret:
        print("rlsproxy token: --secret or RLSPROXY_JWT_SECRET is required", file=sys.stderr)
        return 2
    extra = dict(item.split("=", 1) for item in args.claim)
    print(mint_token(args.secret, sub=args.sub, role=args.role, ttl_s=args.ttl, extra=extra))
    return 0


def _serve(path: str) -> int:
    from rlsproxy.app import ListenError, run
    from rlsproxy.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        return _problems(f"{path}: invalid configuration:", exc.problems)
    from rlsproxy.logs import configure

    configure(config.log.level, config.log.format)
    _raise_open_files_limit()
    loop = _new_loop()
    stop = asyncio.Event()
    hangup = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    try:
        loop.run_until_complete(run(config, path, stop, hangup))
    except ConfigError as exc:  # key or certificate files that exist but cannot be used
        return _problems(f"{path}: cannot start:", exc.problems)
    except ListenError as exc:  # a port in use: one line, no traceback
        print(f"{path}: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


def _problems(heading: str, problems: list[str]) -> int:
    """Print a config's problems, one per line under a heading, to stderr; exit status 1."""
    print(heading, file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 1


def _raise_open_files_limit() -> None:
    """Every client is a socket (and an upstream one once active): use all the descriptors allowed.

    The usual soft limit of 1024 is far below what a proxy holding idle clients needs; past it,
    new connections are dropped by the event loop without a word. PgBouncer documents the same.
    """
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    logging.getLogger("rlsproxy").info("open files limit %s", soft)


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop when importable: the relay's per-message cost is dominated by the loop's I/O path.
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    sys.exit(main())
