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

from array import array
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

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


class RequestStats:
    """What the summary needs of ``requests.parquet``, gathered row by row as the rows are
    written (in request order): counts by status, preemptions, the first arrival, and of the
    completed requests their output tokens, last finish and latencies (24 bytes a request)."""

    def __init__(self) -> None:
        self.total = self.completed = self.rejected = self.unfinished = self.preemptions = self.tokens = 0
        self.first_arrival, self.last_finish = float("inf"), float("-inf")
        self.ttft_s, self.tpot_s, self.e2e_s = array("d"), array("d"), array("d")

    def add(self, row: tuple) -> None:
        """One row of ``requests.parquet`` in schema order."""
        (_, arrival, _, output, _, status, _, finish, ttft, tpot, e2e, preemptions, _, _) = row
        self.total += 1
        self.preemptions += preemptions
        if arrival < self.first_arrival:
            self.first_arrival = arrival
        if status == "completed":
            self.completed += 1
            self.tokens += output
            if finish > self.last_finish:
                self.last_finish = finish
            self.ttft_s.append(ttft)
            self.tpot_s.append(tpot)
            self.e2e_s.append(e2e)
        elif status == "rejected":
            self.rejected += 1
        else:
            self.unfinished += 1

    def add_unarrived(self, arrival_s: np.ndarray) -> None:
        """Requests that never arrived (status ``unfinished``)."""
        if len(arrival_s):
            self.total += len(arrival_s)
            self.unfinished += len(arrival_s)
            self.first_arrival = min(self.first_arrival, float(arrival_s.min()))

    @classmethod
    def of(cls, requests: pa.Table) -> "RequestStats":
        """The statistics of a whole requests table."""
        stats = cls()
        for row in zip(*(requests.column(name).to_pylist() for name in requests.column_names)):
            stats.add(row)
        return stats


def summarize(requests: RequestStats | pa.Table, step_sums: Mapping[str, float], steps: int, *, wall_s: float,
              events: int, sim_time_s: float) -> dict[str, Any]:
    """Latency percentiles, throughput and the step-time breakdown of one run (the fleet's
    cost and energy are added by :func:`sim.cost.money.fleet_cost`); ``requests`` is the
    requests table or its statistics gathered as it was written, ``step_sums`` the column
    sums of ``steps.parquet`` and ``steps`` its rows. Percentiles and throughput count
    completed requests only."""
    r = requests if isinstance(requests, RequestStats) else RequestStats.of(requests)
    completed, tokens = r.completed, r.tokens
    makespan = r.last_finish - r.first_arrival if completed else 0.0

    def of_completed(name: str) -> np.ndarray:
        values = getattr(r, name)
        return np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)

    return {
        "requests": {"total": r.total, "completed": completed, "rejected": r.rejected,
                     "unfinished": r.unfinished, "preemptions": r.preemptions},
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
