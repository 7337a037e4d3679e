"""Layering rules: the import-linter contracts in pyproject.toml, plus a direct AST scan.

The sans-IO core (rlsproxy.wire, rlsproxy.auth, rlsproxy.session) must not import any I/O
machinery, and the wire codec must not import anything of rlsproxy but itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "rlsproxy"
SANS_IO = ("wire", "auth", "session")
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "selectors", "ssl", "uvloop"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative imports resolved.

    ``from pkg import name`` yields both ``pkg`` and ``pkg.name`` (name may be a submodule).
    ``source`` overrides the file's contents (for the scanner's self-check).
    """
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{target}.{alias.name}"


def sources(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def test_import_linter_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"import-linter is not installed next to {sys.executable}"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"lint-imports failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("subpackage", SANS_IO)
def test_sans_io_core_imports_no_io(subpackage: str) -> None:
    offences = []
    for path in sources(subpackage):
        for lineno, target in imported_modules(path):
            if target.split(".")[0] in FORBIDDEN_IN_SANS_IO:
                offences.append(f"{path.relative_to(REPO)}:{lineno}: imports {target}")
    assert not offences, "\n".join(offences)


def test_wire_imports_only_itself_from_rlsproxy() -> None:
    offences = []
    for path in sources("wire"):
        for lineno, target in imported_modules(path):
            top = target.split(".")[0]
            if top != "rlsproxy":
                continue
            # "from rlsproxy import wire" yields "rlsproxy" (the package __init__) and "rlsproxy.wire"
            if target == "rlsproxy" or target == "rlsproxy.wire" or target.startswith("rlsproxy.wire."):
                continue
            offences.append(f"{path.relative_to(REPO)}:{lineno}: imports {target}")
    assert not offences, "\n".join(offences)


def test_the_scan_resolves_relative_imports() -> None:
    """Self-check of the scanner: relative imports, also ones leaving rlsproxy.wire, are resolved."""
    source = "from ..session import machine\nfrom . import frames\nfrom .codec import x\nimport asyncio\n"
    found = {target for _, target in imported_modules(PACKAGE / "wire" / "codec.py", source)}
    assert {"rlsproxy.session", "rlsproxy.session.machine", "rlsproxy.wire.frames", "asyncio"} <= found
    assert "rlsproxy.wire.codec.x" in found
    found_init = {target for _, target in imported_modules(PACKAGE / "wire" / "__init__.py", source)}
    assert "rlsproxy.session" in found_init and "rlsproxy.wire.frames" in found_init
