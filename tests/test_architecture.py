"""The shape of the code, read from its import graph and its calls (issue 10).

Rules held here (``if TYPE_CHECKING:`` imports, used only by the type checker, are exempt):

* only ``sim/des`` and ``sim/network`` import SimPy;
* ``sim/cost``, ``sim/policy`` and ``sim/spec`` import neither SimPy, Hydra, OmegaConf nor the
  configuration's parsing (``sim.config.parse``, ``presets``, ``compose``);
* ``sim/spec`` imports nothing from ``sim`` but ``sim.errors`` and itself;
* ``workloads`` and ``topologies`` import nothing from ``sim``;
* tools and experiments never import ``sim.des`` (they run simulations through ``sim.app``);
* one composition root: simulation objects (fabric, networks, replicas, batchers, KV pools,
  router, request store) are constructed in ``sim/build.py`` only;
* the replica never asks which network fidelity it talks to;
* ``sim/`` keeps at most eleven modules at its top level.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "sim"


def modules(package: Path):
    for path in sorted(package.rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def runtime_imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports at run time (anywhere in the file)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def imports_any(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_only_des_and_network_import_simpy():
    offenders = {mod: bad for path, mod in modules(SIM)
                 if not mod.startswith(("sim.des", "sim.network"))
                 and (bad := imports_any(runtime_imports(path), ("simpy",)))}
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["cost", "policy", "spec"])
def test_pure_packages_import_no_simpy_and_no_config_parsing(package):
    banned = ("simpy", "hydra", "omegaconf", "sim.config.parse", "sim.config.presets", "sim.config.compose",
              "sim.des", "sim.network", "sim.build", "sim.app", "sim.tools", "sim.experiments", "sim.observe")
    offenders = {mod: bad for path, mod in modules(SIM / package) if (bad := imports_any(runtime_imports(path), banned))}
    assert not offenders, offenders


def test_spec_imports_only_errors_and_itself():
    offenders = {}
    for path, mod in modules(SIM / "spec"):
        bad = [n for n in imports_any(runtime_imports(path), ("sim",))
               if not n.startswith(("sim.spec", "sim.errors"))]
        if bad:
            offenders[mod] = bad
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["workloads", "topologies"])
def test_leaf_packages_import_nothing_from_sim(package):
    offenders = {mod: bad for path, mod in modules(ROOT / package)
                 if (bad := imports_any(runtime_imports(path), ("sim", "simpy")))}
    assert not offenders, offenders


def test_tools_and_experiments_never_import_des():
    offenders = {mod: bad for package in ("tools", "experiments") for path, mod in modules(SIM / package)
                 if (bad := imports_any(runtime_imports(path), ("sim.des",)))}
    offenders.update({mod: bad for path, mod in modules(SIM) if path.parent == SIM and path.stem not in ("build", "app")
                      and (bad := imports_any(runtime_imports(path), ("sim.des",)))})
    assert not offenders, offenders


WIRED = {"Fabric", "CollectiveNetwork", "MessageNetwork", "Replica", "ContinuousBatcher", "KVBlockPool",
         "Router", "RequestStore", "Cluster", "CountingEnvironment", "AnalyticModel"}


def test_simulation_objects_are_constructed_in_the_builder_only():
    offenders = []
    for path, mod in modules(SIM):
        if mod == "sim.build":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in WIRED:
                offenders.append(f"{mod}:{node.lineno} {node.func.id}(...)")
    assert not offenders, offenders


def test_replica_never_branches_on_the_network_fidelity():
    for path, mod in modules(SIM / "des"):
        names = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert "fidelity" not in names, mod


def test_sim_top_level_stays_small():
    top = sorted(p.name for p in SIM.glob("*.py"))
    assert len(top) <= 11, top
