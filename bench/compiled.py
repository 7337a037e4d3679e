"""A compiled copy of rlsproxy: the `rlsproxy-mypyc` benchmark target, and `make test-compiled`.

setup.py compiles its COMPILED modules with mypyc when RLSPROXY_COMPILE=1. Here they are compiled
in place in a copy, never in the checkout, where a compiled module would shadow later edits of its
.py; whoever runs the copy puts it first on PYTHONPATH (and checks that the compiled modules are
what got loaded: bench/proxy.py, tests/conftest.py). Without mypy or a C compiler the benchmark
leaves the target out and says why.

    python -m bench.compiled DIRECTORY [PATH ...]   # copy the package (and PATHs) there, compile
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What setup.py needs to build the package: its metadata (pyproject.toml, README.md) and itself.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "rlsproxy")
BUILD_TIMEOUT_S = 300


def compile_copy(directory: Path, extra: Iterable[str] = ()) -> subprocess.CompletedProcess[str]:
    """Copy the build inputs and `extra` paths of the checkout into `directory`; compile there."""
    for name in (*BUILD_INPUTS, *extra):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, directory / name)
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=directory,
        env={**os.environ, "RLSPROXY_COMPILE": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


def build_compiled_tree(directory: Path, say: Callable[[str], None]) -> Path | None:
    """The benchmark's compiled copy in `directory`, or None (said why) if it cannot be built."""
    say("compiling rlsproxy with mypyc for the rlsproxy-mypyc target (setup.py, about 20 s) ...")
    try:
        done = compile_copy(directory)
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"could not compile rlsproxy ({exc}); skipping the rlsproxy-mypyc target")
        return None
    if done.returncode != 0:
        last = "\n".join((done.stdout + done.stderr).splitlines()[-8:])
        say(f"could not compile rlsproxy (needs the compile extra, a C compiler); no rlsproxy-mypyc:\n{last}")
        return None
    return directory


def main(argv: list[str]) -> int:
    directory = Path(argv[0])
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    done = compile_copy(directory, argv[1:])
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
