"""Metrics computed after a run from its tables (the same functions notebooks import).

Definitions (see README "Metrics"):
TTFT = first-token time - arrival; TPOT = (finish - first token) / (output tokens - 1),
undefined for one-token outputs; end-to-end = finish - arrival; output throughput = output
tokens of completed requests / makespan (first arrival to last finish). Cost and energy:
:mod:`sim.cost` (``usd_per_million_output_tokens`` charges the whole fleet over the makespan;
``usd_per_million_output_tokens_busy`` only GPU-hours while a GPU's stage is busy, physics.md
section 5).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sim.cost.money import FleetUse

PARTS = ("compute_s", "memory_s", "network_s", "fixed_s")


def percentiles(values) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99))}


def time_breakdown(step_sums: Mapping[str, float]) -> dict[str, float]:
    """Seconds of every step spent in each part, summed over the steps table (its column sums)."""
    out = {p: float(step_sums.get(p, 0.0)) for p in PARTS}
    out["total_s"] = sum(out[p] for p in PARTS)
    return out


#: What the summary reads of ``requests.parquet``.
SUMMARY_COLUMNS = ["status", "arrival_s", "finish_s", "output_tokens", "preemptions", "ttft_s", "tpot_s", "e2e_s"]


def summarize(requests: pa.Table | Path, step_sums: Mapping[str, float], steps: int, *, wall_s: float,
              events: int, sim_time_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput and the step-time breakdown of one run (the fleet's
    cost and energy are added by :func:`sim.cost.money.fleet_cost`); ``requests`` is the
    requests table or the Parquet file it was written to (read a column at a time),
    ``step_sums`` the column sums of ``steps.parquet`` and ``steps`` its rows. Percentiles and
    throughput count completed requests only."""
    batches = (requests.to_batches() if isinstance(requests, pa.Table)
               else pq.ParquetFile(requests).iter_batches(columns=SUMMARY_COLUMNS))
    total = completed = rejected = unfinished = preemptions = tokens = 0
    first_arrival, last_finish = float("inf"), float("-inf")
    latency: dict[str, list[np.ndarray]] = {"ttft_s": [], "tpot_s": [], "e2e_s": []}
    for batch in batches:   # a row group at a time: memory stays flat however many requests
        status = batch.column("status")
        done = pc.equal(status, "completed")
        total += batch.num_rows
        completed += int(pc.sum(done).as_py() or 0)
        rejected += int(pc.sum(pc.equal(status, "rejected")).as_py() or 0)
        unfinished += int(pc.sum(pc.equal(status, "unfinished")).as_py() or 0)
        preemptions += int(pc.sum(batch.column("preemptions")).as_py() or 0)
        if batch.num_rows:
            first_arrival = min(first_arrival, float(pc.min(batch.column("arrival_s")).as_py()))
        kept = batch.filter(done)
        if kept.num_rows:
            tokens += int(pc.sum(kept.column("output_tokens")).as_py())
            last_finish = max(last_finish, float(pc.max(kept.column("finish_s")).as_py()))
            for name, parts in latency.items():
                parts.append(kept.column(name).to_numpy())
    makespan = last_finish - first_arrival if completed else 0.0

    def of_completed(name: str) -> np.ndarray:
        return np.concatenate(latency[name]) if latency[name] else np.zeros(0)

    return {
        "requests": {"total": total, "completed": completed, "rejected": rejected, "unfinished": unfinished,
                     "preemptions": preemptions},
        "ttft_s": percentiles(of_completed("ttft_s")),
        "tpot_s": percentiles(of_completed("tpot_s")),
        "e2e_s": percentiles(of_completed("e2e_s")),
        "throughput": {"output_tokens_per_s": tokens / makespan if makespan > 0 else None,
                       "requests_per_s": completed / makespan if makespan > 0 else None,
                       "output_tokens": tokens, "makespan_s": makespan},
        "time_breakdown": time_breakdown(step_sums),
        "steps": int(steps),
        "sim": {"wall_s": wall_s, "events": events, "events_per_s": events / wall_s if wall_s > 0 else None,
                "sim_time_s": float(sim_time_s)},
    }


def fleet_parts(cfg, replica_groups: list[int], replica_busy_gpu_s: list[float],
                summary: Mapping[str, Any]) -> list[tuple[Any, FleetUse]]:
    """Per hardware group of the fleet (one group unless ``fleet:`` mixes hardware): its
    hardware and what it used -- GPUs, servers (as a fraction of ``topology.gpus_per_node``-GPU
    nodes: a partial node is charged its share), leaf network ports (one per GPU when the group
    spans nodes), the run's makespan, its busy GPU-seconds, the run's output tokens."""
    per_node = cfg.topology.gpus_per_node
    parts = []
    for k, g in enumerate(cfg.groups()):
        gpus = g.gpus
        multi_node = g.hardware.scaleup_link != "pcie" and gpus > per_node
        busy = sum(b for grp, b in zip(replica_groups, replica_busy_gpu_s) if grp == k)
        parts.append((g.hardware, FleetUse(gpus=gpus, nodes=gpus / per_node, network_ports=gpus if multi_node else 0,
                                           makespan_s=float(summary["throughput"]["makespan_s"]), gpu_busy_s=busy,
                                           output_tokens=int(summary["throughput"]["output_tokens"]))))
    return parts
