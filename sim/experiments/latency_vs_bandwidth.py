"""Headline experiment: per-message network latency, not link bandwidth, limits fast decoding.

Design (physics.md §2 and §4). Llama-3-70B in bf16 on H100s, two tensor-parallel deployments:

* ``TP8``  -- one HGX node, every all-reduce through NVSwitch (``parallel.tp=8``);
* ``TP16`` -- two HGX nodes, all-reduces crossing rail-optimised InfiniBand
  (``topology=multi_node_ib parallel.tp=16``).

Two cases, each run as a discrete-event simulation (one per point, :func:`run_points`):

* ``decode`` -- the decode step at a pinned batch size ``B`` (``scheduler.max_batch_size=B``):
  ``max(B, 3)`` requests with a fixed 512-token prompt and 64 output tokens all arrive within
  microseconds (``rate_per_s=1e6``), and ``scheduler.max_tokens_per_step = B x 512`` lets the
  whole batch prefill in one step, so every later step is a pure decode step at batch ``B``.
  The metric is the median time per output token (``tpot_p50_s``); the median request is a
  clean decode request (only request 0, which arrives alone at t=0, sees the batch's prefill).
* ``prefill`` -- one request with an 8,192-token prompt (default 2,048-token chunks), whose
  time to first token (``ttft_p50_s``) is dominated by prefill steps whose all-reduces carry
  2,048 tokens x 8,192 x 2 bytes = 32 MB each.

Each deployment x batch (or prompt) is swept twice: ``network.latency_scale`` over the scales
with bandwidth at its datasheet value, and ``network.bandwidth_scale`` over the same scales
with latency at its datasheet value. ``latency_scale`` multiplies every per-message latency
(link hops and the collectives' software latency), ``bandwidth_scale`` every link bandwidth.
The unscaled point appears in both sweeps (run twice; the simulator is deterministic).

Every point starts from ``conf/experiment/latency_vs_bandwidth.yaml`` (``+experiment=...``),
so the command-line experiment and this study share one definition.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sim.experiments import DEPLOYMENT_LABELS, DEPLOYMENTS, run_points, with_columns  # noqa: F401  (labels: used by the notebook)

NAME = "latency_vs_bandwidth"
BASE = [f"+experiment={NAME}"]


SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0)
QUICK_SCALES = (0.5, 1.0, 10.0)
BATCHES = (1, 4, 16, 64, 256)
QUICK_BATCHES = (1, 64)
DECODE_PROMPT, DECODE_OUTPUT = 512, 64
PREFILL_PROMPT, PREFILL_OUTPUT = 8192, 2
MIN_REQUESTS = 3

METRIC = {"decode": "tpot_p50_s", "prefill": "ttft_p50_s"}
SWEPT = {"latency": "network.latency_scale", "bandwidth": "network.bandwidth_scale"}

#: identification columns added to the sweep table, one value per point
ID_COLUMNS = ("case", "deployment", "tp", "batch", "prompt_tokens", "swept", "scale", "metric", "metric_s")


def _scales(point_scale: float, swept: str) -> dict[str, float]:
    other = "bandwidth" if swept == "latency" else "latency"
    return {SWEPT[swept]: float(point_scale), SWEPT[other]: 1.0}


def points(quick: bool = False) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The grid: ``(labels, overrides)`` per simulation, decode points first, then prefill.

    ``labels`` holds the identification columns (case, deployment, tp, batch, prompt_tokens,
    swept, scale); ``overrides`` the Hydra overrides of that run on top of :data:`BASE`.
    Every point sets every varied key, so all rows of the sweep table have the same columns.
    """
    scales = QUICK_SCALES if quick else SCALES
    batches = QUICK_BATCHES if quick else BATCHES
    out = []
    for dep, dep_over in DEPLOYMENTS.items():
        for batch in batches:
            for swept in SWEPT:
                for s in scales:
                    over = {**dep_over, "scheduler.max_batch_size": batch,
                            "scheduler.max_tokens_per_step": max(2048, batch * DECODE_PROMPT),
                            "workload.max_requests": max(batch, MIN_REQUESTS),
                            "workload.prompt_tokens": DECODE_PROMPT, "workload.output_tokens": DECODE_OUTPUT,
                            **_scales(s, swept)}
                    labels = {"case": "decode", "deployment": dep, "tp": dep_over["parallel.tp"], "batch": batch,
                              "prompt_tokens": DECODE_PROMPT, "swept": swept, "scale": float(s)}
                    out.append((labels, over))
    for dep, dep_over in DEPLOYMENTS.items():
        for swept in SWEPT:
            for s in scales:
                over = {**dep_over, "scheduler.max_batch_size": 1, "scheduler.max_tokens_per_step": 2048,
                        "workload.max_requests": 1,
                        "workload.prompt_tokens": PREFILL_PROMPT, "workload.output_tokens": PREFILL_OUTPUT,
                        **_scales(s, swept)}
                labels = {"case": "prefill", "deployment": dep, "tp": dep_over["parallel.tp"], "batch": 1,
                          "prompt_tokens": PREFILL_PROMPT, "swept": swept, "scale": float(s)}
                out.append((labels, over))
    return out


def label_table(sweep: pa.Table, labels: list[dict[str, Any]]) -> pa.Table:
    """The sweep table (rows in job order ``0..n-1``) with the identification columns appended.

    ``metric`` names the case's headline metric (``tpot_p50_s`` for decode, ``ttft_p50_s``
    for prefill) and ``metric_s`` holds its value, so one column serves both cases.
    """
    jobs = [int(j) for j in sweep.column("job").to_pylist()]
    rows = [labels[j] for j in jobs]
    metric_names = [METRIC[r["case"]] for r in rows]
    values = [sweep.column(m)[i].as_py() if m in sweep.column_names else None for i, m in enumerate(metric_names)]
    extra = {
        "case": pa.array([r["case"] for r in rows], pa.string()),
        "deployment": pa.array([r["deployment"] for r in rows], pa.string()),
        "tp": pa.array([r["tp"] for r in rows], pa.int64()),
        "batch": pa.array([r["batch"] for r in rows], pa.int64()),
        "prompt_tokens": pa.array([r["prompt_tokens"] for r in rows], pa.int64()),
        "swept": pa.array([r["swept"] for r in rows], pa.string()),
        "scale": pa.array([r["scale"] for r in rows], pa.float64()),
        "metric": pa.array(metric_names, pa.string()),
        "metric_s": pa.array(values, pa.float64()),
    }
    return with_columns(sweep, extra)


def run(root: str | Path, quick: bool = False) -> pa.Table:
    """Run the grid under ``root/jobs/<i>/`` and return (and write) the tidy table.

    The table is written to ``root/latency_vs_bandwidth.parquet``: the sweep table of
    :func:`sim.tools.sweep.collect` plus :data:`ID_COLUMNS`. Errors (none expected) are kept in
    the ``error`` column rather than raised.
    """
    root = Path(root)
    grid = points(quick)
    sweep = run_points(BASE, [over for _, over in grid], root / "jobs")
    table = label_table(sweep, [labels for labels, _ in grid])
    pq.write_table(table, root / f"{NAME}.parquet")
    return table


def speedups(table: pa.Table, latency_scale: float = 0.5, bandwidth_scale: float = 10.0) -> pa.Table:
    """Per (case, deployment, batch, prompt): what halving latency buys vs 10x bandwidth.

    Compares ``metric_s`` at ``scale == 1`` (the baseline, taken from the latency sweep) with
    the latency sweep at ``latency_scale`` and the bandwidth sweep at ``bandwidth_scale``.
    Columns: the keys, ``base_s``, ``latency_s``, ``bandwidth_s``, ``latency_gain`` and
    ``bandwidth_gain`` (fraction of the time saved, ``1 - new / base``), ``latency_speedup``
    and ``bandwidth_speedup`` (``base / new``), and ``latency_wins`` (latency saves more).
    Groups missing one of the three points are left out. Rows keep the table's order.
    """
    rows = table.select(["case", "deployment", "batch", "prompt_tokens", "swept", "scale", "metric_s"]).to_pylist()
    keys: list[tuple] = []
    found: dict[tuple, dict[str, float]] = {}
    for r in rows:
        key = (r["case"], r["deployment"], r["batch"], r["prompt_tokens"])
        if key not in found:
            keys.append(key)
            found[key] = {}
        v = r["metric_s"]
        if v is None:
            continue
        if r["swept"] == "latency" and r["scale"] == 1.0:
            found[key].setdefault("base", v)
        elif r["swept"] == "bandwidth" and r["scale"] == 1.0:
            found[key].setdefault("base_bw", v)
        if r["swept"] == "latency" and r["scale"] == latency_scale:
            found[key]["lat"] = v
        if r["swept"] == "bandwidth" and r["scale"] == bandwidth_scale:
            found[key]["bw"] = v
    out: dict[str, list] = {k: [] for k in (
        "case", "deployment", "batch", "prompt_tokens", "base_s", "latency_s", "bandwidth_s", "latency_gain",
        "bandwidth_gain", "latency_speedup", "bandwidth_speedup", "latency_wins")}
    for key in keys:
        f = found[key]
        base = f.get("base", f.get("base_bw"))
        if base is None or "lat" not in f or "bw" not in f:
            continue
        for name, v in zip(("case", "deployment", "batch", "prompt_tokens"), key):
            out[name].append(v)
        out["base_s"].append(base)
        out["latency_s"].append(f["lat"])
        out["bandwidth_s"].append(f["bw"])
        out["latency_gain"].append(1.0 - f["lat"] / base)
        out["bandwidth_gain"].append(1.0 - f["bw"] / base)
        out["latency_speedup"].append(base / f["lat"])
        out["bandwidth_speedup"].append(base / f["bw"])
        out["latency_wins"].append(f["lat"] < f["bw"])
    types = {"case": pa.string(), "deployment": pa.string(), "batch": pa.int64(), "prompt_tokens": pa.int64(),
             "latency_wins": pa.bool_()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in out.items()})


def series(table: pa.Table, case: str, deployment: str, swept: str, batch: int | None = None) -> tuple[list, list]:
    """``(scales, metric_s)`` of one sweep line, sorted by scale (for plotting)."""
    pts = sorted(
        (r["scale"], r["metric_s"]) for r in table.select(["case", "deployment", "swept", "batch", "scale", "metric_s"])
        .to_pylist()
        if r["case"] == case and r["deployment"] == deployment and r["swept"] == swept
        and (batch is None or r["batch"] == batch) and r["metric_s"] is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def values(table: pa.Table, column: str) -> list:
    """Distinct values of a column in first-seen order."""
    return list(dict.fromkeys(table.column(column).to_pylist()))


__all__ = ["points", "run", "label_table", "speedups", "series", "values"]
