"""`rlsproxy serve` on a port that is already taken: one line naming the config key and the address,
a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlsproxy.app import listen_error
from tests.support.ports import free_port

SECRET = "s" * 32


@pytest.fixture
def held() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def serve(tmp_path: Path, listen_port: int, http: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "rlsproxy.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {listen_port}}}\n"
        "upstream: {host: 127.0.0.1, port: 1}\n"  # never reached: the proxy connects on demand
        f"jwt: {{secret: {SECRET}}}\n"
        f"http: {http}\n"
        "log: {format: text}\n",
        encoding="utf-8",
    )
    # If the port were not refused the proxy would serve: the timeout fails the test.
    return subprocess.run(
        [sys.executable, "-m", "rlsproxy", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], line: str) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [text for text in proc.stderr.splitlines() if "cannot start" in text]
    assert errors == [line], proc.stderr


def test_listen_port_in_use(tmp_path: Path, held: int) -> None:
    proc = serve(tmp_path, held, "{enabled: false}")
    config = tmp_path / "rlsproxy.yaml"
    expected = (
        f"{config}: cannot start: listen.port: cannot listen on 127.0.0.1:{held}: address already in use"
    )
    assert_one_line(proc, expected)


def test_http_port_in_use(tmp_path: Path, held: int) -> None:
    proc = serve(tmp_path, free_port(), f"{{host: 127.0.0.1, port: {held}}}")
    config = tmp_path / "rlsproxy.yaml"
    expected = f"{config}: cannot start: http.port: cannot listen on 127.0.0.1:{held}: address already in use"
    assert_one_line(proc, expected)


def test_an_address_not_on_this_host_names_the_host() -> None:
    exc = OSError(errno.EADDRNOTAVAIL, "error while attempting to bind on address ('192.0.2.1', 6432)")
    assert str(listen_error("listen", "192.0.2.1", 6432, exc)) == (
        "listen.host: cannot listen on 192.0.2.1:6432: cannot assign requested address"
    )


def test_a_name_that_does_not_resolve_names_the_host() -> None:
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert str(listen_error("http", "no-such-host.invalid", 9432, exc)) == (
        "http.host: cannot listen on no-such-host.invalid:9432: name or service not known"
    )
