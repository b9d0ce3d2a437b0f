"""Headline experiment: serving as deployed in 2026 -- disaggregated pools, prefix caching,
routers, and expert parallelism under per-message latency.

Design. Two studies, each point one discrete-event simulation (:func:`sim.experiments.run_points`).

* **Pools** (``conf/experiment/serving.yaml``): Llama-3-70B bf16 on 32 H100s (four HGX nodes
  over InfiniBand) replaying the bundled Mooncake trace (3,993 requests; long prompts, many
  sharing prefixes). ``colocated``: four TP8 replicas, each prefilling (in chunks that share
  its decode steps) and decoding. ``disaggregated``: three TP8 prefill replicas hand each
  request's KV cache layer by layer over InfiniBand to one TP8 decode replica (the trace's
  prompts are ~20x its outputs, so prefill gets most of the GPUs). Each deployment with
  prefix caching off (``round_robin``, ``least_outstanding_tokens``) and on (those two and
  ``prefix_aware``). Per point: TTFT and TPOT percentiles, goodput (completed requests per
  second meeting both ``SLO_TTFT_S`` and ``SLO_TPOT_S``), $ per million output tokens, prefix
  hit rate, KV moved; the notebook plots the TTFT and TPOT distributions from each
  point's ``requests.parquet``.
* **MoE** : DeepSeek-V3 in fp8 on 16 H100s (two nodes), tensor-parallel (``ep=1``: TP16,
  two all-reduces per layer across InfiniBand) or expert-parallel (``ep=16``: data-parallel
  attention, two all-to-alls per MoE layer), at ``network.latency_scale`` 0.25..4 and 10x
  bandwidth, under a light synthetic load (decode batches of a few sequences) and a heavy one.
  The metric is mean TPOT.

``quick``: the first ``QUICK_REQUESTS`` Mooncake requests and fewer latency points.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.experiments import run_points, save_tables

NAME = "serving"
BASE = [f"+experiment={NAME}"]

#: goodput counts requests whose first token came within SLO_TTFT_S and whose mean time per
#: output token stayed within SLO_TPOT_S (interactive chat targets: DistServe's goodput)
SLO_TTFT_S = 2.0
SLO_TPOT_S = 0.05
QUICK_REQUESTS = 600

DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "colocated": {},
    "disaggregated": {"disagg": "pools", "disagg.prefill.replicas": 3, "disagg.decode.replicas": 1},
}
CACHING: list[tuple[bool, str]] = [(False, "round_robin"), (False, "least_outstanding_tokens"),
                                   (True, "round_robin"), (True, "least_outstanding_tokens"), (True, "prefix_aware")]

MOE_BASE = ["model=deepseek_v3", "precision.weights=fp8", "topology=multi_node_ib", "parallel.tp=16",
            "workload=synthetic", "workload.prompt_tokens={dist: fixed, value: 1024}",
            "workload.output_tokens={dist: fixed, value: 128}", "output.progress=never"]
MOE_LOADS = {"light": {"workload.rate_per_s": 1.0, "workload.max_requests": 30},
             "heavy": {"workload.rate_per_s": 40.0, "workload.max_requests": 400}}
LATENCY_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def pool_points(quick: bool = False) -> list[dict[str, Any]]:
    """The pools study's points (overrides), deployment-major."""
    points = []
    for dep, over in DEPLOYMENTS.items():
        for caching, router in CACHING:
            p = dict(over)
            p["scheduler.prefix_caching"] = str(caching).lower()
            p["parallel.router"] = router
            if quick:
                p["workload.max_requests"] = QUICK_REQUESTS
            points.append(p)
    return points


def goodput(requests: pa.Table, makespan_s: float) -> float:
    """Completed requests per second of the run meeting both SLOs (a one-token request: TTFT only)."""
    status = np.array(requests.column("status").to_pylist())
    ttft = requests.column("ttft_s").to_numpy(zero_copy_only=False)
    tpot = requests.column("tpot_s").to_numpy(zero_copy_only=False)
    ok = (status == "completed") & (ttft <= SLO_TTFT_S) & (np.isnan(tpot) | (tpot <= SLO_TPOT_S))
    return float(ok.sum()) / makespan_s if makespan_s > 0 else float("nan")


def _pool_row(job: Path, point: dict[str, Any], deployment: str) -> dict[str, Any]:
    s = json.loads((job / "summary.json").read_text())
    req = pq.read_table(job / "requests.parquet", columns=["status", "ttft_s", "tpot_s"])
    kv = s.get("kv_transfer") or {}
    return {
        "deployment": deployment, "prefix_caching": point["scheduler.prefix_caching"] == "true",
        "router": point["parallel.router"], "requests": s["requests"]["total"],
        "completed": s["requests"]["completed"],
        "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
        "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"],
        "goodput_rps": goodput(req, s["throughput"]["makespan_s"]),
        "throughput_rps": s["throughput"]["requests_per_s"],
        "usd_per_million_tokens": s["cost"]["usd_per_million_output_tokens"],
        "prefix_hit_rate": (s.get("prefix_cache") or {}).get("hit_rate", 0.0),
        "kv_moved_GB": kv.get("bytes", 0.0) / 1e9, "kv_exposed_p99_s": kv.get("exposed_p99_s", float("nan")),
        "gpus": s["cost"]["gpus"], "job": str(job),
    }


def _run_all(base: list[str], points: list[dict[str, Any]], root: Path, study: str) -> None:
    """Every point under ``root/<i>/``; a point that cannot run stops the study (RuntimeError)."""
    sweep = run_points(base, points, root)
    errors = [e for e in sweep.column("error").to_pylist() if e]
    if errors:
        raise RuntimeError(f"serving {study} study: {errors[0]}")


def run_pools(root: str | Path, quick: bool = False) -> pa.Table:
    """The pools study under ``root/pools/<i>/``: one row per point (see the module docstring)."""
    root = Path(root) / "pools"
    points = pool_points(quick)
    _run_all(BASE, points, root, "pools")
    per_dep = len(CACHING)
    deps = list(DEPLOYMENTS)
    rows = [_pool_row(root / str(i), p, deps[i // per_dep]) for i, p in enumerate(points)]
    return pa.Table.from_pylist(rows)


def moe_points(quick: bool = False) -> list[dict[str, Any]]:
    """The MoE study's points: load x parallelism x network what-if."""
    scales = (0.5, 1.0, 2.0) if quick else LATENCY_SCALES
    points = []
    for load, over in MOE_LOADS.items():
        for ep in (1, 16):
            nets = [{"network.latency_scale": s} for s in scales] + [{"network.bandwidth_scale": 10}]
            for net in nets:
                p = dict(over)
                if quick:
                    p["workload.max_requests"] = min(int(p["workload.max_requests"]), 120 if load == "heavy" else 12)
                points.append({**p, "parallel.ep": ep, **net})
    return points


def run_moe(root: str | Path, quick: bool = False) -> pa.Table:
    """The MoE study under ``root/moe/<i>/``: mean and p99 TPOT per (load, ep, latency, bandwidth)."""
    root = Path(root) / "moe"
    points = moe_points(quick)
    _run_all(MOE_BASE, points, root, "MoE")
    rows = []
    for i, p in enumerate(points):
        s = json.loads((root / str(i) / "summary.json").read_text())
        load = next(k for k, v in MOE_LOADS.items() if v["workload.rate_per_s"] == p["workload.rate_per_s"])
        rows.append({"load": load, "ep": int(p["parallel.ep"]),
                     "latency_scale": float(p.get("network.latency_scale", 1.0)),
                     "bandwidth_scale": float(p.get("network.bandwidth_scale", 1.0)),
                     "tpot_mean_s": s["tpot_s"]["mean"], "tpot_p99_s": s["tpot_s"]["p99"],
                     "ttft_p50_s": s["ttft_s"]["p50"], "network_share": s["time_breakdown"]["network_s"]
                     / s["time_breakdown"]["total_s"], "usd_per_million_tokens": s["cost"]["usd_per_million_output_tokens"]})
    return pa.Table.from_pylist(rows)


def run(root: str | Path, quick: bool = False) -> dict[str, pa.Table]:
    """Both studies; their tables also written as ``root/serving_{pools,moe}.parquet``."""
    root = Path(root)
    return save_tables({"pools": run_pools(root, quick), "moe": run_moe(root, quick)}, root, NAME)
