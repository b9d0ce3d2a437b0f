"""The workloads package must stay independent of the simulator and config stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import workloads

FORBIDDEN = ("sim", "simpy", "topologies", "hydra", "omegaconf")


def test_import_does_not_pull_in_simulator():
    code = (
        "import sys, workloads; "
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_sources_have_no_forbidden_imports():
    package_dir = Path(workloads.__file__).parent
    sources = sorted(package_dir.glob("*.py"))
    assert sources
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"


def test_public_names_exported():
    for name in workloads.__all__:
        assert hasattr(workloads, name), name
