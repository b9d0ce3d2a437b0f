"""The import graph points inward: ``workloads`` and ``topologies`` never import ``sim`` or
``simpy``; ``sim`` is the only package that imports ``simpy``.

Checked statically (``ast`` over every ``.py`` file of each package, including imports inside
functions and ``if TYPE_CHECKING`` blocks) and dynamically (importing the pure packages in a
fresh interpreter loads neither ``sim`` nor ``simpy``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = ("workloads", "topologies")


def imported_roots(path: Path) -> set[str]:
    """Top-level module names that ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources in {package}/"
    return files


def test_scanner_sees_imports():
    """Self-check of the scanner on sim/, which does import simpy and the pure packages."""
    roots = set().union(*(imported_roots(p) for p in sources("sim")))
    assert {"simpy", "workloads", "topologies"} <= roots


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_import_neither_sim_nor_simpy(package):
    offenders = {}
    for path in sources(package):
        bad = imported_roots(path) & {"sim", "simpy"}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders


def test_only_sim_imports_simpy():
    packages = [p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert {"sim", "workloads", "topologies"} <= set(packages)
    offenders = {}
    for package in packages:
        if package == "sim":
            continue
        for path in sources(package):
            if "simpy" in imported_roots(path):
                offenders[str(path.relative_to(ROOT))] = "simpy"
    for extra in ("benchmarks", "notebooks"):
        for path in sorted((ROOT / extra).rglob("*.py")) if (ROOT / extra).is_dir() else []:
            if "simpy" in imported_roots(path):
                offenders[str(path.relative_to(ROOT))] = "simpy"
    assert not offenders, offenders


def test_importing_pure_packages_loads_no_simulator():
    code = ("import sys, workloads, topologies\n"
            "import pkgutil, importlib\n"
            "for pkg in (workloads, topologies):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('sim', 'simpy'))))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""
