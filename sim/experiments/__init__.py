"""Headline experiments: functions that run (or analyse) a study and return tidy tables.

Each module is named after its experiment (``conf/experiment/NAME.yaml`` and
``notebooks/NAME.ipynb``); notebooks only call these functions, read Parquet and plot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import yaml

from ..app import run
from ..errors import ConfigError
from ..steptime import compose_config
from ..sweep import collect


def run_points(base: Iterable[str], points: Iterable[dict[str, Any]], root: str | Path) -> pa.Table:
    """Run one simulation per point (Hydra-style overrides) under ``root/<i>/``; return the sweep table.

    Each job directory gets ``.hydra/overrides.yaml`` like a Hydra multirun job, so the
    result is exactly what ``python -m sim.collect`` gives for the equivalent ``-m`` sweep.
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
