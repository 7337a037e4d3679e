"""setup.py's compiled build: what it lists exists, and the pure build stays pure."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.compiled import ROOT, compiled_paths, module_name, not_compiled


def test_the_compiled_modules_are_rlsproxy_modules_that_exist() -> None:
    paths = compiled_paths()
    assert paths, "setup.py compiles nothing"
    assert len(set(paths)) == len(paths), paths
    for path in paths:
        assert path.startswith("rlsproxy/") and path.endswith(".py"), path
        assert (ROOT / path).is_file(), path
    # The per-message path is what the build is for.
    assert {"rlsproxy.session.relay", "rlsproxy.session.server", "rlsproxy.wire.framing"} <= {
        module_name(p) for p in paths
    }


def test_this_run_imports_what_it_says_it_tests() -> None:
    """`make test-compiled` (RLSPROXY_EXPECT_COMPILED=1) runs on the extensions; `make test` on the source."""
    missing = not_compiled()
    if os.environ.get("RLSPROXY_EXPECT_COMPILED") == "1":
        assert missing == []
    else:
        assert len(missing) == len(compiled_paths()), missing


def test_setup_py_without_the_switch_builds_no_extension() -> None:
    """Without RLSPROXY_COMPILE an install needs neither mypy nor a compiler: setup() gets no extensions."""
    probe = (
        "import runpy, setuptools; seen = {}; "
        "setuptools.setup = lambda **kw: seen.update(kw); "
        "runpy.run_path('setup.py'); print(sorted(seen))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RLSPROXY_COMPILE"}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
