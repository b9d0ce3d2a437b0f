"""Headline experiments: functions that run (or analyse) a study and return tidy tables.

Each module is named after its experiment (``conf/experiment/NAME.yaml`` and
``notebooks/NAME.ipynb``); notebooks only call these functions, read Parquet and plot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import yaml

from sim.app import run
from sim.config.compose import compose_config
from sim.errors import ConfigError
from sim.tools.sweep import collect


def run_points(base: Iterable[str], points: Iterable[dict[str, Any]], root: str | Path) -> pa.Table:
    """Run one simulation per point (Hydra-style overrides) under ``root/<i>/``; return the sweep table.

    Each job directory gets ``.hydra/overrides.yaml`` like a Hydra multirun job, so the
    result is what ``python -m sim.collect`` gives for the equivalent ``-m`` sweep, in one table:
    ``sweep.parquet``'s columns plus the ``sim_*`` runtime columns of ``sweep_runtime.parquet``.
    Impossible points are recorded as ``error.txt`` and the sweep goes on.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = list(base)
    for i, point in enumerate(points):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True, exist_ok=True)
        overrides = [f"{k}={v}" for k, v in point.items()]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(base + overrides))
        try:
            run(compose_config(base + overrides), job)
        except ConfigError as exc:
            (job / "error.txt").write_text(str(exc) + "\n")
    return collect(root)


# Deployments the headline experiments compare: one HGX node, and two over InfiniBand.
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "TP8": {"topology": "hgx", "parallel.tp": 8},
    "TP16": {"topology": "multi_node_ib", "parallel.tp": 16},
}
DEPLOYMENT_LABELS = {"TP8": "TP8 (1 node, NVSwitch)", "TP16": "TP16 (2 nodes, InfiniBand)"}


def save_tables(tables: dict[str, pa.Table], root: str | Path, name: str) -> dict[str, pa.Table]:
    """Write each table as ``root/<name>_<key>.parquet``; returns ``tables``."""
    import pyarrow.parquet as pq

    for key, table in tables.items():
        pq.write_table(table, Path(root) / f"{name}_{key}.parquet")
    return tables


def load_tables(root: str | Path, name: str, keys) -> dict[str, pa.Table]:
    """The tables :func:`save_tables` wrote under ``root``."""
    import pyarrow.parquet as pq

    return {k: pq.read_table(Path(root) / f"{name}_{k}.parquet") for k in keys}


def with_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """``table`` with ``columns`` appended, replacing any of the same name."""
    for name, col in columns.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, col)
    return table
