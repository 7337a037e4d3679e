"""`python -m rlsproxy.devcluster` (the README's "Try it by hand"): a plain `kill` (SIGTERM) stops
the server and removes its directory as Ctrl-C does, and a port in use is one line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 240  # initdb and the demo schema, on a busy 2-core machine
STOP_TIMEOUT_S = 120


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def process_gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (it no longer runs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_sigterm_stops_the_server_and_removes_its_directory(tmp_path: Path) -> None:
    out_path = tmp_path / "out.txt"
    with out_path.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlsproxy.devcluster"], stdout=out, stderr=subprocess.STDOUT, text=True
        )
    workdir: Path | None = None
    postmaster: int | None = None
    try:
        wait_for(
            lambda: "Ctrl-C" in out_path.read_text(encoding="utf-8") or proc.poll() is not None,
            READY_TIMEOUT_S,
            "the cluster to be ready",
        )
        output = out_path.read_text(encoding="utf-8")
        assert proc.poll() is None, output
        data = re.search(r"data directory: (\S+)", output)
        ready = re.search(r"ready: postgresql://\S+@127\.0\.0\.1:(\d+)/", output)
        assert data is not None and ready is not None, output
        workdir, port = Path(data.group(1)), int(ready.group(1))
        pid = postmaster = int((workdir / "data" / "postmaster.pid").read_text(encoding="ascii").split()[0])
        assert not process_gone(pid)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT_S) == 0, out_path.read_text(encoding="utf-8")

        assert "Traceback" not in out_path.read_text(encoding="utf-8")
        wait_for(lambda: process_gone(pid), 30, f"postmaster {pid} to exit")
        assert not workdir.exists()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        # A failing run must not leave a server behind either.
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
        if postmaster is not None and not process_gone(postmaster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown
            left = postmaster
            wait_for(lambda: process_gone(left), 30, "postmaster to exit after SIGQUIT")
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "rlsproxy.devcluster", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
        )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"python -m rlsproxy.devcluster: --port {port}: cannot listen on 127.0.0.1:{port}: "
        "address already in use\n"
    )
