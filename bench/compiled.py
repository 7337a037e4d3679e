"""rlsproxy's compiled build for the `rlsproxy-mypyc` target: what the container image runs.

setup.py compiles its COMPILED modules with mypyc when RLSPROXY_COMPILE=1. Here they are compiled
in place in a copy of the package inside the benchmark's scratch directory (removed with the
stack), never in the checkout, where a compiled module would shadow later edits of its .py; the
proxy process finds the copy first through PYTHONPATH. Without mypy or a C compiler the target is
left out, and the benchmark says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SOURCES = ("pyproject.toml", "setup.py", "README.md")
BUILD_TIMEOUT_S = 300


def build_compiled_tree(directory: Path, say: Callable[[str], None]) -> Path | None:
    """Compile a copy of the package in `directory`; its path for PYTHONPATH, or None if it failed."""
    for name in _SOURCES:
        shutil.copy2(ROOT / name, directory / name)
    shutil.copytree(ROOT / "rlsproxy", directory / "rlsproxy", ignore=shutil.ignore_patterns("__pycache__"))
    say("compiling rlsproxy with mypyc for the rlsproxy-mypyc target (setup.py, about 20 s) ...")
    env = {**os.environ, "RLSPROXY_COMPILE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"could not compile rlsproxy ({exc}); skipping the rlsproxy-mypyc target")
        return None
    if done.returncode != 0:
        last = "\n".join((done.stdout + done.stderr).splitlines()[-8:])
        say(f"could not compile rlsproxy (needs the compile extra, a C compiler); no rlsproxy-mypyc:\n{last}")
        return None
    probe = subprocess.run(
        [sys.executable, "-c", "import rlsproxy.session.relay as m; print(m.__file__)"],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(directory)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if not probe.stdout.strip().endswith(".so"):
        say(f"the compiled build is not what Python imports ({probe.stdout.strip()} {probe.stderr.strip()})")
        return None
    return directory
