"""rlsproxy as the benchmark runs it: a separate process (`python -m rlsproxy serve`) with its own config.

A separate process rather than a thread in the benchmark, so its CPU time and memory can be read
from /proc on their own and the benchmark's Python does not share its interpreter lock.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

from bench.ports import free_port, start_logged, stop_process
from rlsproxy.devcluster import AUTHENTICATOR_PASSWORD, DevCluster

# HS256 needs at least 32 bytes of secret; this one only ever signs tokens for the throwaway cluster.
JWT_SECRET = "rlsproxy-bench-secret-0123456789abcdef"
POOL_MAX_SIZE = 40  # above the largest pgbench client count (32), so clients never queue for the pool
ACQUIRE_TIMEOUT_MS = 5000  # the shipped default: what a client beyond the pool waits before 53300
_BAD_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
_ROUTINE_LEVEL = re.compile(r"\b(INFO|DEBUG)\b")


class ProxyProcess:
    """A running rlsproxy; stop() ends it. With `compiled_tree` (bench/compiled.py) it runs that
    compiled copy of the package instead of the checkout's."""

    def __init__(self, pg: DevCluster, workdir: Path, compiled_tree: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.config_path = workdir / "rlsproxy.yaml"
        self.log_path = workdir / "rlsproxy.log"
        self.config_path.write_text(yaml.safe_dump(self._config(pg), sort_keys=False))
        self.config_path.chmod(0o600)  # it holds the upstream password and the JWT secret
        argv = [sys.executable, "-m", "rlsproxy", "serve", "--config", str(self.config_path)]
        if compiled_tree is None:
            self.proc = start_logged(argv, self.log_path, self.host, self.port)
        else:
            # Started in the copy: `python -m` puts the working directory ahead of PYTHONPATH.
            env = {**os.environ, "PYTHONPATH": str(compiled_tree)}
            self.proc = start_logged(argv, self.log_path, self.host, self.port, env=env, cwd=compiled_tree)
            if not self.runs_compiled():
                self.stop()
                raise RuntimeError(f"rlsproxy from {compiled_tree} did not load its compiled modules")

    def _config(self, pg: DevCluster) -> dict[str, object]:
        return {
            "listen": {"host": self.host, "port": self.port},
            "upstream": {
                "host": pg.host,
                "port": pg.port,
                "database": "app",
                "user": "authenticator",
                "password": AUTHENTICATOR_PASSWORD,
            },
            "pool": {"mode": "session", "max_size": POOL_MAX_SIZE, "acquire_timeout_ms": ACQUIRE_TIMEOUT_MS},
            "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET},
            "http": {"enabled": False},
            # The shipped defaults: every connection logs a line, as it would in production and as
            # PgBouncer does (log_connections). log.connections: false saves about 10 µs of proxy
            # user CPU per connection (pgbench -C, the setting toggled by reload in one run).
            "log": {"format": "text", "level": "INFO", "connections": True},
        }

    def runs_compiled(self) -> bool:
        """The process has mypyc's shared library of the compiled build mapped."""
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text(errors="replace")
        return "__mypyc." in maps

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)

    def problems(self, limit: int = 20) -> list[str]:
        """Lines of its log that are not routine INFO/DEBUG records: warnings, errors, tracebacks."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        # By level word rather than by layout: the text log format is the proxy's to change.
        return [line for line in lines if _BAD_LEVEL.search(line) or not _ROUTINE_LEVEL.search(line)][:limit]
