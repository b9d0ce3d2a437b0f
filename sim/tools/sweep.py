"""Collect a Hydra multirun into one tidy table: one row per job, overrides and metrics as columns.

Each job directory holds ``.hydra/overrides.yaml`` (the job's overrides) and either
``summary.json`` (a finished run) or ``error.txt`` (an impossible point recorded by the
sweep). Metric names are flattened with the unit moved to the end, e.g. ``ttft_s.p99`` ->
``ttft_p99_s``, ``throughput.output_tokens_per_s`` -> ``throughput_output_tokens_per_s``.

``python -m sim.collect SWEEP_DIR`` writes two files:

* ``SWEEP_DIR/sweep.parquet``: ``job``, the overridden config values, the metrics and
  ``error``. It holds only what the simulation determines, so the same sweep gives the same
  file whichever launcher ran it (basic, joblib, Ray, Slurm) and however its jobs interleaved.
* ``SWEEP_DIR/sweep_runtime.parquet``: ``job``, the overrides and the summary's ``sim`` block
  (the simulator's own wall time, events and events/s), which differ from run to run.

Assumptions: Hydra numbers jobs in sweep order (the job directory names ``0``, ``1``, ...),
whatever the launcher, so rows are ordered by job number; a job's directory is on a
filesystem this process can read (for a Ray or Slurm cluster, a shared ``hydra.sweep.dir``).
"""
from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sim.errors import ConfigError
from sim.tools.cli import fail, guarded

#: how ``error.txt`` of a job that failed (rather than an impossible point) begins
FAILED_PREFIX = "failed:"

#: the block of ``summary.json`` that measures the simulator itself (not the simulated cluster)
RUNTIME_KEY = "sim"

#: Hydra launchers ``python -m sim -m`` knows, with the plugin each needs and the extra installing it
LAUNCHER_PLUGINS = {
    "joblib": "hydra_joblib_launcher",
    "ray": "hydra_ray_launcher",
    "ray_cluster": "hydra_ray_launcher",
    "ray_aws": "hydra_ray_launcher",
    "slurm": "hydra_submitit_launcher",
    "submitit_slurm": "hydra_submitit_launcher",
    "submitit_local": "hydra_submitit_launcher",
}


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
    """Job directories (those with ``.hydra/``) in job-number order (``2`` before ``10``)."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def _rows(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Every job's row, the override column names and the runtime (``sim_*``) column names."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"sweep directory {str(sweep_dir)!r} does not exist")
    rows, overrides, runtime = [], {}, {}
    for job in job_dirs(root):
        row: dict[str, Any] = {"job": job.name}
        values = _override_values(job)
        overrides.update(dict.fromkeys(values))
        row.update(values)
        if (job / "summary.json").is_file():
            summary = json.loads((job / "summary.json").read_text())
            flat = flatten(summary)
            runtime.update(dict.fromkeys(flatten({RUNTIME_KEY: summary.get(RUNTIME_KEY) or {}})))
            row.update(flat)
            row["error"] = None
        elif (job / "error.txt").is_file():
            row["error"] = (job / "error.txt").read_text().strip()
        else:
            row["error"] = "no summary.json (job did not finish)"
        rows.append(row)
    if not rows:
        raise ConfigError(f"no Hydra job directories under {str(sweep_dir)!r}")
    return rows, list(overrides), [c for c in runtime if c not in overrides]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    """``columns`` of ``rows`` as Arrow: numbers (float if any float), booleans, else strings."""
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


def collect(sweep_dir: str | Path) -> pa.Table:
    """The sweep as one table (one row per job), runtime ``sim_*`` columns included.

    Error jobs keep their overrides and ``error``. This is what in-process callers
    (:func:`sim.experiments.run_points`) use; ``sweep.parquet`` is this table without the
    runtime columns (:func:`collect_tables`).
    """
    rows, _, _ = _rows(sweep_dir)
    return _table(rows, list(dict.fromkeys(k for r in rows for k in r)))


def collect_tables(sweep_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """``(sweep, runtime)``: the deterministic table of ``sweep.parquet`` and ``sweep_runtime.parquet``'s.

    ``sweep`` has ``job``, the overrides, the metrics and ``error`` and is identical for the
    same sweep under any launcher; ``runtime`` has ``job``, the overrides and the ``sim_*``
    columns (simulator wall time, events, events/s).
    """
    rows, overrides, runtime = _rows(sweep_dir)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    sweep = _table(rows, [c for c in columns if c not in runtime])
    return sweep, _table(rows, ["job", *overrides, *runtime])


def check_launcher(overrides: list[str], environ: Mapping[str, str]) -> None:
    """Reject a ``hydra/launcher=NAME`` that cannot start, in one line, before Hydra runs.

    Cases Hydra would otherwise report as a long traceback: the launcher's plugin is not
    installed (``pip install -e '.[sweeps]'``); ``ray_cluster`` without a cluster address
    (``RAY_ADDRESS`` unset or empty and no ``hydra.launcher.ray.init.address=...`` override),
    where the sweep must not quietly start a local Ray instance instead; and ``ray`` (a local
    instance) with an address, which Ray would try to join with the plugin's local-only
    ``object_store_memory`` setting and refuse.
    """
    for arg in overrides:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key != "hydra/launcher":
            continue
        plugin = LAUNCHER_PLUGINS.get(value)
        if value != "basic" and plugin is None:
            raise ConfigError(f"hydra/launcher={value} is not a launcher; allowed: {['basic', *LAUNCHER_PLUGINS]}")
        if plugin and find_spec(f"hydra_plugins.{plugin}") is None:
            raise ConfigError(f"hydra/launcher={value} needs the {plugin.replace('_', '-')} plugin: "
                              "pip install -e '.[sweeps]'")
        explicit = any(a.lstrip("+").startswith("hydra.launcher.ray.init.address=") for a in overrides)
        if value == "ray_cluster" and not explicit and not environ.get("RAY_ADDRESS"):
            raise ConfigError("hydra/launcher=ray_cluster needs the cluster's address: set RAY_ADDRESS "
                              "(e.g. RAY_ADDRESS=ray://HEAD:10001) or hydra.launcher.ray.init.address=...; "
                              "hydra/launcher=ray starts a local Ray instance")
        if value == "ray" and (explicit or environ.get("RAY_ADDRESS")):
            raise ConfigError("hydra/launcher=ray starts a local Ray instance but a cluster address is given "
                              "(RAY_ADDRESS or hydra.launcher.ray.init.address): use hydra/launcher=ray_cluster "
                              "for that cluster, or unset RAY_ADDRESS")


@guarded
def main(argv: list[str] | None = None) -> Path:
    """Write ``SWEEP_DIR/sweep.parquet`` and ``SWEEP_DIR/sweep_runtime.parquet``; print a JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        fail("usage: python -m sim.collect SWEEP_DIR")
    table, runtime = collect_tables(argv[0])
    out = Path(argv[0]) / "sweep.parquet"
    pq.write_table(table, out)
    pq.write_table(runtime, out.with_name("sweep_runtime.parquet"))
    print(json.dumps({"path": str(out), "runtime_path": str(out.with_name("sweep_runtime.parquet")),
                      "jobs": table.num_rows, "columns": table.num_columns}))
    return out


class SweepFailures(Callback):
    """After a sweep's last job (any launcher): exit 1 with one line naming the jobs that
    failed for a reason other than an impossible configuration -- a wall limit, a simulator
    bug -- whose ``error.txt`` begins with ``failed:``. Impossible points do not fail a sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        failed = sorted((p.parent.name for p in sweep.glob("*/error.txt")
                         if p.read_text().startswith(FAILED_PREFIX)), key=lambda name: (len(name), name))
        if failed:
            shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
            sys.stderr.write(f"error: {len(failed)} sweep job(s) failed (jobs {shown}); see their error.txt in {sweep}\n")
            raise SystemExit(1)
