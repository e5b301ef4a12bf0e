"""The import policy (README, Layout): imports at module top; a function-level import only where
import time is measured to matter (``# heavy: ...``) or for a true cycle (``# cycle: ...``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"fedrs": "fedrs", "clients": "fedrs.clients", "server": "fedrs.server"}
PACKAGES |= {"strategies": "fedrs.strategies", "partitions": "fedrs.partitions"}
HEAVY = ("mlflow", "flwr", "ray", "faiss", "matplotlib", "rasterio", "pandas")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def local_imports() -> list[tuple[Path, int, str]]:
    """(file, line, module) of every import inside a function of the core."""
    found: list[tuple[Path, int, str]] = []

    def visit(path: Path, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                if in_function:
                    names = (
                        [a.name for a in child.names]
                        if isinstance(child, ast.Import)
                        else [child.module or ""]
                    )
                    found.extend((path, child.lineno, name) for name in names)
                continue
            visit(path, child, in_function or isinstance(child, ast.FunctionDef))

    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            visit(path, ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_each_local_import_says_why() -> None:
    unexplained = []
    for path, line, module in local_imports():
        lines = path.read_text(encoding="utf-8").splitlines()
        here = lines[line - 1] + lines[line - 2]
        if "# heavy:" not in here and "# cycle:" not in here:
            unexplained.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not unexplained


def test_apps_import_nothing_at_run_time() -> None:
    """Flower loads both apps under its app-loading lock; the modules their run-time paths
    import inside functions must be loaded by then, so no thread imports while the run goes."""
    loaded = _loaded_after("import fedrs.server.app, fedrs.clients.app")
    late = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path, line, module in local_imports()
        if "cli" not in path.relative_to(ROOT).parts and module not in loaded
    ]
    assert not late


def test_help_stays_light() -> None:
    loaded = _loaded_after("import fedrs.cli")
    assert not [m for m in HEAVY if m in loaded]
