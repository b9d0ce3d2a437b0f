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
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.cost.money import FleetUse

PARTS = ("compute_s", "memory_s", "network_s", "fixed_s")


def percentiles(values, owned: bool = False) -> dict[str, float | None]:
    """Mean and p50/p90/p99 of the finite ``values`` (linear interpolation). ``owned``: the
    caller gives up ``values`` (a float64 array), which is then partitioned in place instead
    of copied -- one copy fewer of a million-request column."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    elif not owned:
        v = v.copy()
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    mean = float(v.mean())                     # before the partition reorders v
    p50, p90, p99 = np.percentile(v, [50, 90, 99], overwrite_input=True)
    return {"mean": mean, "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def time_breakdown(step_sums: Mapping[str, float]) -> dict[str, float]:
    """Seconds of every step spent in each part, summed over the steps table (its column sums)."""
    out = {p: float(step_sums.get(p, 0.0)) for p in PARTS}
    out["total_s"] = sum(out[p] for p in PARTS)
    return out


class RequestStats:
    """What the summary needs of ``requests.parquet``, gathered row by row as the rows are
    written (in request order): counts by status, preemptions, the first arrival, and of the
    completed requests their output tokens and last finish. Their latencies are either kept
    (24 bytes a request) or, when the table is being written to ``path``, read back from the
    finished file one column at a time (:meth:`latencies`), so that memory does not grow
    with the trace."""

    LATENCIES = ("ttft_s", "tpot_s", "e2e_s")

    def __init__(self, path: Path | None = None) -> None:
        self.total = self.completed = self.rejected = self.failed = self.unfinished = self.preemptions = self.tokens = 0
        self.first_arrival, self.last_finish = float("inf"), float("-inf")
        self.path = path
        self._kept = None if path is not None else {name: array("d") for name in self.LATENCIES}
        self._completed: np.ndarray | None = None     # mask of the completed rows of the file

    def add(self, row: tuple) -> None:
        """One row of ``requests.parquet`` in schema order."""
        (_, arrival, _, output, _, status, _, _, finish, ttft, tpot, e2e, preemptions, *_) = row
        self.total += 1
        self.preemptions += preemptions
        if arrival < self.first_arrival:
            self.first_arrival = arrival
        if status == "completed":
            self.completed += 1
            self.tokens += output
            if finish > self.last_finish:
                self.last_finish = finish
            if self._kept is not None:
                self._kept["ttft_s"].append(ttft)
                self._kept["tpot_s"].append(tpot)
                self._kept["e2e_s"].append(e2e)
        elif status == "rejected":
            self.rejected += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.unfinished += 1

    def add_unarrived(self, arrival_s: np.ndarray) -> None:
        """Requests that never arrived (status ``unfinished``)."""
        if len(arrival_s):
            self.total += len(arrival_s)
            self.unfinished += len(arrival_s)
            self.first_arrival = min(self.first_arrival, float(arrival_s.min()))

    def latencies(self, name: str) -> np.ndarray:
        """``ttft_s``, ``tpot_s`` or ``e2e_s`` of the completed requests, in request order, as
        a new float64 array the caller owns. From the file: read row group by row group into
        one array; a row is a completed request exactly when its ``e2e_s`` is finite (the
        others have no finish time)."""
        if self._kept is not None:
            return np.array(self._kept[name], dtype=np.float64)
        assert self.path is not None
        file = pq.ParquetFile(self.path)
        if self._completed is None:                 # one column in memory at a time
            self._completed = np.isfinite(self._column(file, "e2e_s"))
            if int(self._completed.sum()) != self.completed:
                raise RuntimeError(f"{self.path}: {int(self._completed.sum())} rows with a finish time, "
                                   f"{self.completed} completed requests")
        values = self._column(file, name)
        return values if self._completed.all() else values[self._completed]

    @staticmethod
    def _column(file: pq.ParquetFile, name: str) -> np.ndarray:
        out = np.empty(file.metadata.num_rows, dtype=np.float64)
        at = 0
        for g in range(file.num_row_groups):
            chunk = file.read_row_group(g, columns=[name]).column(0).to_numpy()
            out[at:at + len(chunk)] = chunk
            at += len(chunk)
        return out

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

    return {
        "requests": {"total": r.total, "completed": completed, "rejected": r.rejected,
                     "failed": r.failed, "unfinished": r.unfinished, "preemptions": r.preemptions},
        **{name: percentiles(r.latencies(name), owned=True) for name in r.LATENCIES},
        "throughput": {"output_tokens_per_s": tokens / makespan if makespan > 0 else None,
                       "requests_per_s": completed / makespan if makespan > 0 else None,
                       "output_tokens": tokens, "makespan_s": makespan},
        "time_breakdown": time_breakdown(step_sums),
        "steps": int(steps),
        "sim": {"wall_s": wall_s, "events": events, "events_per_s": events / wall_s if wall_s > 0 else None,
                "sim_time_s": float(sim_time_s)},
    }


def fleet_parts(cfg, replica_groups: list[int], replica_busy_gpu_s: list[float],
                summary: Mapping[str, Any], alive_gpu_s: float | None = None) -> list[tuple[Any, FleetUse]]:
    """Per hardware group of the fleet (one group unless ``fleet:`` mixes hardware): its
    hardware and what it used -- GPUs, servers (as a fraction of ``topology.gpus_per_node``-GPU
    nodes: a partial node is charged its share), leaf network ports (one per GPU when the group
    spans nodes), the run's makespan, its busy GPU-seconds, the run's output tokens, and
    (autoscaling, one group) the GPU-seconds alive over the makespan."""
    per_node = cfg.topology.gpus_per_node
    parts = []
    for k, g in enumerate(cfg.groups()):
        gpus = g.gpus
        multi_node = g.hardware.scaleup_link != "pcie" and gpus > per_node
        busy = sum(b for grp, b in zip(replica_groups, replica_busy_gpu_s) if grp == k)
        parts.append((g.hardware, FleetUse(gpus=gpus, nodes=gpus / per_node, network_ports=gpus if multi_node else 0,
                                           makespan_s=float(summary["throughput"]["makespan_s"]), gpu_busy_s=busy,
                                           output_tokens=int(summary["throughput"]["output_tokens"]),
                                           alive_gpu_s=alive_gpu_s)))
    return parts
