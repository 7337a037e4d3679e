"""What the numbers were measured on, for the JSON file: results only compare on like machines."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import rlsproxy

REPO = Path(__file__).resolve().parent.parent


def describe_machine(postgres_version: str, pgbouncer_version: str | None) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_kib": _meminfo("MemTotal"),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "event_loop": _uvloop_version(),
        "postgres": postgres_version,
        "pgbouncer": pgbouncer_version or "not installed",
        "rlsproxy": rlsproxy.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "load_average_at_start": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _uvloop_version() -> str:
    # The proxy runs on uvloop when it is installed (rlsproxy.cli), else on asyncio's own loop.
    try:
        return f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        return "asyncio"


def _git(*args: str) -> str:
    """Read-only git queries; empty when this is not a checkout."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""
