"""Headline experiment: where a decode step's time goes as the batch grows.

Design (physics.md §1). One discrete-event run of ``conf/experiment/time_breakdown.yaml``:
Llama-3-70B in bf16, TP8 on one H100 HGX node, Poisson arrivals at 20 requests/s with a fixed
512-token prompt and 1,024 output tokens, ``scheduler.max_batch_size=512``. Each request
holds the replica for ~1,024 steps, so the running batch ramps from 1 to ~500 sequences while
requests keep arriving and drains back to 1 after the last arrival -- one run visits every
batch size. (``quick``: 300 requests of 512 output tokens at 40/s; the batch peaks at 300
in about a third of the steps.)

``steps.parquet`` records every step's four additive parts: arithmetic (``compute_s``), HBM
traffic (``memory_s``), collectives (``network_s``) and launch gaps / per-step overhead
(``fixed_s``). :func:`shares_by_batch` keeps the decode-only steps (``prefill_tokens == 0``;
steps carrying a prefill chunk are a different workload), bins them by ``batch_size`` and
gives each part's time-weighted share of the bin's step time. :func:`analytic_shares` adds
the same shares from :class:`sim.cost.analytic.AnalyticModel` at each bin's mean batch and mean
context, a consistency check between the closed form and the simulation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.experiments import run_points

NAME = "time_breakdown"
BASE = [f"+experiment={NAME}"]
QUICK = {"workload.rate_per_s": 40, "workload.max_requests": 300, "workload.output_tokens": 512}

PARTS = ("compute", "memory", "network", "fixed")
#: batch-size bin edges; bin i holds lo <= batch_size < hi
BINS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)


def run_dir(root: str | Path) -> Path:
    """The run's output directory (``requests.parquet``, ``steps.parquet``, ``summary.json``)."""
    return Path(root) / "jobs" / "0"


def shares_by_batch(steps: pa.Table, bins: Sequence[int] = BINS, block_size: int = 16) -> pa.Table:
    """Decode-only steps binned by batch size: each part's share of the step time.

    ``steps`` needs ``batch_size``, ``prefill_tokens``, ``duration_s`` and the four parts
    (``compute_s``, ``memory_s``, ``network_s``, ``fixed_s``); ``kv_blocks_used`` is optional.
    Bin ``i`` holds steps with ``bins[i] <= batch_size < bins[i+1]``; empty bins are left out.
    Shares are time-weighted (sum of a part over the bin / sum of the four parts), so they sum
    to 1 in every bin. Columns: ``bin_lo``, ``bin_hi``, ``steps``, ``batch_mean``,
    ``context_mean`` (KV tokens per sequence, ``kv_blocks_used x block_size / batch_size``,
    rounded up to whole blocks; NaN without ``kv_blocks_used``), ``step_mean_s``, and per part
    ``<part>_mean_s`` (mean seconds per step) and ``<part>_share``.
    """
    edges = np.asarray(bins, dtype=np.int64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins={list(bins)!r} must be at least two increasing edges")
    cols = steps.column_names
    batch = np.asarray(steps.column("batch_size").to_numpy(zero_copy_only=False), dtype=np.int64)
    prefill = np.asarray(steps.column("prefill_tokens").to_numpy(zero_copy_only=False), dtype=np.int64)
    parts = {p: np.asarray(steps.column(f"{p}_s").to_numpy(zero_copy_only=False), dtype=np.float64) for p in PARTS}
    kv = (np.asarray(steps.column("kv_blocks_used").to_numpy(zero_copy_only=False), dtype=np.float64)
          if "kv_blocks_used" in cols else None)
    decode = (prefill == 0) & (batch >= 1)
    out: dict[str, list[Any]] = {k: [] for k in ("bin_lo", "bin_hi", "steps", "batch_mean", "context_mean",
                                                 "step_mean_s")}
    for p in PARTS:
        out[f"{p}_mean_s"] = []
        out[f"{p}_share"] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = decode & (batch >= lo) & (batch < hi)
        n = int(sel.sum())
        if n == 0:
            continue
        total = sum(parts[p][sel].sum() for p in PARTS)
        out["bin_lo"].append(int(lo))
        out["bin_hi"].append(int(hi))
        out["steps"].append(n)
        out["batch_mean"].append(float(batch[sel].mean()))
        out["context_mean"].append(float((kv[sel] * block_size / batch[sel]).mean()) if kv is not None else float("nan"))
        out["step_mean_s"].append(float(total / n))
        for p in PARTS:
            out[f"{p}_mean_s"].append(float(parts[p][sel].mean()))
            out[f"{p}_share"].append(float(parts[p][sel].sum() / total) if total > 0 else float("nan"))
    types = {"bin_lo": pa.int64(), "bin_hi": pa.int64(), "steps": pa.int64()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in out.items()})


def analytic_shares(overrides: Sequence[str], batch: Sequence[float], context_len: Sequence[float]) -> pa.Table:
    """The four shares from :meth:`AnalyticModel.decode` at each ``(batch, context_len)`` pair.

    ``overrides`` compose the deployment (e.g. ``["+experiment=time_breakdown"]``); the split
    is that config's ``parallel.tp`` x ``parallel.pp``. Columns ``analytic_step_s`` and
    ``analytic_<part>_share``, aligned with ``batch``.
    """
    from sim.build import analytic_model
    from sim.config.compose import compose_config
    from sim.config.parse import parse_config
    from sim.cost.analytic import Split

    cfg = parse_config(compose_config(list(overrides)))
    model = analytic_model(cfg)
    split = Split(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.tp_cols)
    out: dict[str, list[float]] = {"analytic_step_s": [], **{f"analytic_{p}_share": [] for p in PARTS}}
    for b, ctx in zip(batch, context_len):
        r = model.decode(split, [float(b)], context_len=float(ctx))
        t = {p: float(r[f"{p}_s"][0]) for p in PARTS}
        total = sum(t.values())
        out["analytic_step_s"].append(total)
        for p in PARTS:
            out[f"analytic_{p}_share"].append(t[p] / total)
    return pa.table({k: pa.array(v, pa.float64()) for k, v in out.items()})


def run(root: str | Path, quick: bool = False, bins: Sequence[int] = BINS) -> pa.Table:
    """Run the experiment under ``root/jobs/0/`` and return the per-bin table.

    The table (:func:`shares_by_batch` joined column-wise with :func:`analytic_shares` at each
    bin's ``batch_mean`` and ``context_mean``) is also written to ``root/time_breakdown.parquet``.
    A failed run raises ``RuntimeError`` with the simulator's message.
    """
    root = Path(root)
    point = dict(QUICK) if quick else {}
    sweep = run_points(BASE, [point], root / "jobs")
    error = sweep.column("error")[0].as_py()
    if error:
        raise RuntimeError(f"time_breakdown run failed: {error}")
    steps = pq.read_table(run_dir(root) / "steps.parquet")
    shares = shares_by_batch(steps, bins)
    overrides = BASE + [f"{k}={v}" for k, v in point.items()]
    analytic = analytic_shares(overrides, shares.column("batch_mean").to_pylist(),
                               shares.column("context_mean").to_pylist())
    table = shares
    for name in analytic.column_names:
        table = table.append_column(name, analytic.column(name))
    pq.write_table(table, root / f"{NAME}.parquet")
    return table
