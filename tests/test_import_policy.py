"""The import policy (README, Layout): imports at module top; a function-level import, or one
under ``if TYPE_CHECKING:``, only where import time is measured to matter (``# heavy: ...``) or
for a true cycle (``# cycle: ...``); and a module imports no underscore (module-private) name
from another fedrs module."""

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
FOLDERS = (*PACKAGES, "bench")
"""Where the rules hold: the packages and the benchmarks (tests may reach into a module)."""


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


def _sources() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(encoding="utf-8")))
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]


def _module_name(path: Path) -> str:
    """``fedrs.strategies.guard`` for strategies/guard.py, ``bench.rd`` for bench/rd.py."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES.get(rel.parts[0], rel.parts[0]), *rel.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _folder(module: str) -> Path | None:
    """The folder of a fedrs package (``fedrs.strategies``: strategies/), None for a module."""
    for folder, package in sorted(PACKAGES.items(), key=lambda item: -len(item[1])):
        if module == package or module.startswith(package + "."):
            path = ROOT / folder / Path(*module.split(".")[len(package.split(".")) :])
            return path if path.is_dir() else None
    return None


def _is_module(package: str, name: str) -> bool:
    """Whether ``from package import name`` imports a module (``from fedrs import _coder``)."""
    folder = _folder(package)
    return folder is not None and (
        (folder / name).is_dir()
        or (folder / f"{name}.py").exists()
        or any(folder.glob(f"{name}.*.so"))
        or (folder / f"{name}.pyi").exists()
    )


def private_imports() -> list[str]:
    """``file:line: module.name`` of every underscore name imported from another fedrs module."""
    found = []
    for path, tree in _sources():
        here = _module_name(path)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.split(".")[0] != "fedrs" or module == here:
                continue
            found.extend(
                f"{path.relative_to(ROOT)}:{node.lineno}: {module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_")
                and not alias.name.startswith("__")
                and not _is_module(module, alias.name)
            )
    return found


def unexplained_type_checking() -> list[str]:
    """``file:line`` of every ``if TYPE_CHECKING:`` block without a ``# cycle:`` or
    ``# heavy:`` comment on the line above it (or on its own line)."""
    found = []
    for path, tree in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _type_checking(node):
                here = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
                if "# heavy:" not in here and "# cycle:" not in here:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
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


def test_each_type_checking_import_says_why() -> None:
    assert not unexplained_type_checking()


def test_no_private_name_crosses_modules() -> None:
    assert not private_imports()


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
