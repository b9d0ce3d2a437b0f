"""Collect a Hydra multirun into one tidy table: one row per job, overrides and metrics as columns.

Each job directory holds ``.hydra/overrides.yaml`` (the job's overrides) and either
``summary.json`` (a finished run) or ``error.txt`` (an impossible point recorded by the
sweep). Metric names are flattened with the unit moved to the end, e.g. ``ttft_s.p99`` ->
``ttft_p99_s``, ``throughput.output_tokens_per_s`` -> ``throughput_output_tokens_per_s``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .cli import fail, guarded
from .errors import ConfigError


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            for sub, v in flatten(value).items():
                if key.endswith("_s") and not sub.endswith("_s"):
                    out[f"{prefix}{key[:-2]}_{sub}_s"] = v
                else:
                    out[f"{prefix}{key}_{sub}"] = v
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def _override_values(job: Path) -> dict[str, Any]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = yaml.safe_load(value) if value else None
    return out


def job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def collect(sweep_dir: str | Path) -> pa.Table:
    """The sweep as a table (one row per job); error jobs keep their overrides and ``error``."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"sweep directory {str(sweep_dir)!r} does not exist")
    rows = []
    for job in job_dirs(root):
        row: dict[str, Any] = {"job": job.name}
        row.update(_override_values(job))
        if (job / "summary.json").is_file():
            row.update(flatten(json.loads((job / "summary.json").read_text())))
            row["error"] = None
        elif (job / "error.txt").is_file():
            row["error"] = (job / "error.txt").read_text().strip()
        else:
            row["error"] = "no summary.json (job did not finish)"
        rows.append(row)
    if not rows:
        raise ConfigError(f"no Hydra job directories under {str(sweep_dir)!r}")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    data = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int, float} and kinds:
            data[c] = pa.array([None if v is None else float(v) for v in values]) if float in kinds else pa.array(values)
        elif kinds <= {bool}:
            data[c] = pa.array(values, type=pa.bool_())
        else:
            data[c] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(data)


@guarded
def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        fail("usage: python -m sim.collect SWEEP_DIR")
    table = collect(argv[0])
    out = Path(argv[0]) / "sweep.parquet"
    pq.write_table(table, out)
    print(json.dumps({"path": str(out), "jobs": table.num_rows, "columns": table.num_columns}))
    return out
