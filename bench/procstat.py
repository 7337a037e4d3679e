"""What a process costs, read from /proc: CPU seconds, resident memory, open-file limit."""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_user_system_seconds(stat_line: str, ticks_per_second: int = _CLOCK_TICKS) -> tuple[float, float]:
    """(utime, stime) of a /proc/PID/stat line, in seconds.

    The command name (field 2) is in parentheses and may itself hold spaces or ')', so fields are
    counted from the last ')'. After it, utime and stime are the 12th and 13th fields.
    """
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    return int(rest[11]) / ticks_per_second, int(rest[12]) / ticks_per_second


def user_system_seconds(pid: int) -> tuple[float, float]:
    return parse_user_system_seconds(Path(f"/proc/{pid}/stat").read_text())


def parse_tree_fields(stat_line: str, ticks_per_second: int = _CLOCK_TICKS) -> tuple[int, float, float]:
    """(parent pid, own utime + stime, cutime + cstime of its children already waited for) in seconds."""
    rest = stat_line[stat_line.rindex(")") + 2 :].split()
    own = (int(rest[11]) + int(rest[12])) / ticks_per_second
    reaped = (int(rest[13]) + int(rest[14])) / ticks_per_second
    return int(rest[1]), own, reaped


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and its children, live or ended: Postgres' postmaster and its backends.

    A backend that exited (a direct connection's, a pooler's reconnect) is in the postmaster's
    cutime/cstime once reaped; live ones are read one by one.
    """
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, own, reaped = parse_tree_fields((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while we looked
        if int(entry.name) == root:
            total += own + reaped
        elif parent == root:
            total += own
    return total


def parse_status_kib(status: str, field: str) -> int | None:
    """A "kB" field of /proc/PID/status (e.g. VmRSS), in KiB."""
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_kib(pid: int) -> int | None:
    try:
        return parse_status_kib(Path(f"/proc/{pid}/status").read_text(), "VmRSS")
    except FileNotFoundError:
        return None


def open_files_limit(pid: int) -> str:
    """The soft/hard "Max open files" of a process, as /proc/PID/limits shows it."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except FileNotFoundError:
        pass
    return "unknown"
