"""The modules setup.py compiles with mypyc (its COMPILED list, read without running setup.py)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP_PY = ROOT / "setup.py"


def compiled_paths() -> list[str]:
    """setup.py's COMPILED: paths of the modules the compiled build turns into C extensions."""
    tree = ast.parse(SETUP_PY.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["COMPILED"]:
            paths = ast.literal_eval(node.value)
            assert isinstance(paths, list) and all(isinstance(p, str) for p in paths), paths
            return paths
    raise AssertionError(f"no COMPILED list in {SETUP_PY}")


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def not_compiled() -> list[str]:
    """The listed modules that this interpreter imports from source rather than as an extension."""
    found = []
    for path in compiled_paths():
        module = importlib.import_module(module_name(path))
        if not str(module.__file__).endswith(".so"):
            found.append(f"{module.__name__} ({module.__file__})")
    return found
