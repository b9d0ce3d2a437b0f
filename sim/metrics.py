"""Metrics computed after a run from its tables (the same functions notebooks import).

Definitions (see README "Metrics"):
TTFT = first-token time - arrival; TPOT = (finish - first token) / (output tokens - 1),
undefined for one-token outputs; end-to-end = finish - arrival; output throughput = output
tokens of completed requests / makespan (first arrival to last finish). Cost: the fleet's
price per hour; ``usd_per_million_output_tokens`` charges GPU-hours while a GPU's stage is busy
(physics.md section 5: GPUs x price x busy hours / tokens), and
``usd_per_million_output_tokens_wall`` charges the whole makespan, as renting does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

PARTS = ("compute_s", "memory_s", "network_s", "fixed_s")


def percentiles(values) -> dict[str, float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99))}


def time_breakdown(steps: pa.Table) -> dict[str, float]:
    out = {p: float(np.sum(steps.column(p).to_numpy())) if steps.num_rows else 0.0 for p in PARTS}
    out["total_s"] = sum(out[p] for p in PARTS)
    return out


def summarize(requests: pa.Table, steps: pa.Table, *, gpus: int, usd_per_gpu_hour: float,
              gpu_busy_s: float, wall_s: float, events: int) -> dict[str, Any]:
    status = requests.column("status").to_numpy(zero_copy_only=False)
    done = status == "completed"
    arrival = requests.column("arrival_s").to_numpy()
    finish = requests.column("finish_s").to_numpy()
    out_tokens = requests.column("output_tokens").to_numpy()
    tokens = int(out_tokens[done].sum())
    makespan = float(np.nanmax(finish) - arrival.min()) if done.any() else 0.0
    busy_gpu_h = gpu_busy_s / 3600.0
    usd_per_hour = gpus * usd_per_gpu_hour
    def per_mtok(usd: float) -> float | None:
        return usd / tokens * 1e6 if tokens else None
    return {
        "requests": {"total": int(requests.num_rows), "completed": int(done.sum()),
                     "rejected": int((~done).sum()),
                     "preemptions": int(requests.column("preemptions").to_numpy().sum())},
        "ttft_s": percentiles(requests.column("ttft_s").to_numpy()[done]),
        "tpot_s": percentiles(requests.column("tpot_s").to_numpy()[done]),
        "e2e_s": percentiles(requests.column("e2e_s").to_numpy()[done]),
        "throughput": {"output_tokens_per_s": tokens / makespan if makespan > 0 else None,
                       "requests_per_s": float(done.sum()) / makespan if makespan > 0 else None,
                       "output_tokens": tokens, "makespan_s": makespan},
        "time_breakdown": time_breakdown(steps),
        "steps": int(steps.num_rows),
        "cost": {"gpus": gpus, "usd_per_gpu_hour": usd_per_gpu_hour, "usd_per_hour": usd_per_hour,
                 "busy_gpu_hours": busy_gpu_h,
                 "usd_per_million_output_tokens": per_mtok(busy_gpu_h * usd_per_gpu_hour),
                 "usd_per_million_output_tokens_wall": per_mtok(usd_per_hour * makespan / 3600.0)},
        "sim": {"wall_s": wall_s, "events": events, "events_per_s": events / wall_s if wall_s > 0 else None},
    }
