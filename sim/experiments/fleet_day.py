"""Headline experiment ``fleet_day``: one day of real demand on a fixed fleet, an autoscaled one,
and an autoscaled one with N+1 headroom, with and without failures; the cost of each SLO level.

Design. Llama-3-70B bf16, TP4 replicas on H100 HGX nodes over InfiniBand (up to ``MAX_REPLICAS``),
serving ``workload=azure_code_day``: the bundled Azure code hour replayed 24 times under the
code service's mean day from the Azure LLM inference trace 2024 (211,656 requests; 0.6 req/s at
08:00 UTC, 5.3 req/s at 19:00). Every point is one discrete-event simulation of the whole day
(:func:`sim.experiments.run_points`).

* ``fixed``: 1..``MAX_REPLICAS`` replicas all day.
* autoscaled, from one replica up to ``MAX_REPLICAS``, each started replica serving after its
  spin-up: the ``utilization`` policy (the serving replicas' busy fraction over each 15 s
  interval against 60 %), the ``slo`` policy (each interval's p90 TTFT against 1 s), and the
  latter with ``autoscale.headroom=1`` (N+1).
* the largest fixed fleet and the ``slo`` deployments again with failures at the Llama 3 paper's
  rates, and at ``STRESS`` times them (published rates give ~0.01 failures a day on 24 GPUs).

SLO attainment: the fraction of requests whose TTFT is within ``SLO_TTFT_S`` and whose TPOT
within ``SLO_TPOT_S`` (DistServe's definition); a deployment meets an SLO level when at least
``ATTAINMENT`` of the day's requests do. Cost: rented GPU-hours alive over the day.

Bands: the headline comparison (the cheapest fixed fleet meeting the 5 s level, ``BAND_FIXED``
replicas, against the ``slo``-autoscaled one) is run again for ``BAND_DRAWS`` draws of the
calibration's parameter uncertainty and of the traffic (:mod:`sim.tools.uncertainty`; draw
``k`` is the same for both, so the saving is a paired difference); the ``bands`` table gives
each deployment's cost and attainment, and the saving, at the 10th / 50th / 90th percentile.

``quick``: the bundled hour's first ``QUICK_REQUESTS`` requests twice (the day's first ~30
minutes: the night's low load), fewer points; for the tests and the notebook's quick run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.experiments import run_points, save_tables

NAME = "fleet_day"
BASE = [f"+experiment={NAME}"]

MAX_REPLICAS = 6
SLO_TTFT_S = 5.0
SLO_TPOT_S = 0.2
ATTAINMENT = 0.99
#: TTFT targets (s) for the cost of each SLO level
SLO_LEVELS = (2.0, 5.0, 10.0)
#: failures at this multiple of the published rates, to see what they do within a day
STRESS = 1000.0
QUICK_REQUESTS = 2000
#: the bands' draws and the fixed fleet they compare with the slo-autoscaled one
BAND_DRAWS = 8
BAND_FIXED = 5

#: the autoscaled deployments (1..MAX_REPLICAS, HPA arithmetic), by label: on the serving
#: replicas' busy fraction (60 % target), on the p90 TTFT of each interval (1 s target), and the
#: latter with N+1 headroom
AUTOSCALED: dict[str, dict[str, Any]] = {
    "autoscaled (utilization)": {"autoscale": "utilization", "autoscale.target_utilization": 0.6},
    "autoscaled (slo)": {"autoscale": "slo", "autoscale.slo_ttft_s": 1.0},
    "autoscaled (slo) N+1": {"autoscale": "slo", "autoscale.slo_ttft_s": 1.0, "autoscale.headroom": 1},
}


def points(quick: bool) -> list[dict[str, Any]]:
    """The study's runs: fixed fleets, autoscaled, with and without faults (the largest fixed
    fleet and the slo-autoscaled ones)."""
    sizes = (1, 2) if quick else range(1, MAX_REPLICAS + 1)
    out: list[dict[str, Any]] = [{"parallel.dp": n} for n in sizes]
    out += [dict(p) for p in AUTOSCALED.values()]
    faulty: list[dict[str, Any]] = [{"parallel.dp": max(sizes)}, AUTOSCALED["autoscaled (slo)"],
                                    AUTOSCALED["autoscaled (slo) N+1"]]
    for scale in ((STRESS,) if quick else (1.0, STRESS)):
        out += [{**p, "faults": "mtbf", "faults.rate_scale": scale} for p in faulty]
    if quick:
        out = [{**p, "workload.max_requests": QUICK_REQUESTS, "workload.repeat": 2} for p in out]
    return out


def band_points(quick: bool) -> list[tuple[str, int, dict[str, Any]]]:
    """The bands' runs: draw k (1..``BAND_DRAWS``; 2 when quick) of the fixed and the slo-autoscaled
    deployment, each with its draw's overrides and a ``band.draw`` / ``band.deployment`` tag."""
    from sim.config.compose import compose_config
    from sim.tools.uncertainty import UncertaintyConfig, draw_overrides

    draws = 2 if quick else BAND_DRAWS
    fixed = {"parallel.dp": 2 if quick else BAND_FIXED}
    deployments = {f"fixed {fixed['parallel.dp']}": fixed, "autoscaled (slo)": AUTOSCALED["autoscaled (slo)"]}
    extra = {"workload.max_requests": QUICK_REQUESTS, "workload.repeat": 2} if quick else {}
    out = []
    for label, point in deployments.items():
        overrides = [f"{k}={v}" for k, v in {**point, **extra}.items()]
        cfg = compose_config(BASE + overrides)
        for k in range(1, draws + 1):
            out.append((label, k, {**point, **extra, **draw_overrides(cfg, k, UncertaintyConfig(draws=draws))}))
    return out


def bands(root: Path, quick: bool) -> pa.Table:
    """Run the bands' draws under ``root`` and summarise them (see the module docstring)."""
    from sim.tools.uncertainty import band

    pts = band_points(quick)
    sweep = run_points(BASE, [p for _, _, p in pts], root).to_pylist()
    per: dict[str, dict[int, dict[str, float]]] = {}
    for i, ((label, k, _), r) in enumerate(zip(pts, sweep)):
        req = root / str(r.get("job", i)) / "requests.parquet"
        per.setdefault(label, {})[k] = {"usd_per_day": _usd_per_day(r), "attainment": attainment(req)}
    rows = []
    for label, draws in per.items():
        for metric in ("usd_per_day", "attainment"):
            b = band([d[metric] for d in draws.values()], 10, 90)
            rows.append({"deployment": label, "metric": metric, "draws": len(draws), **b})
        rows.append({"deployment": label, "metric": "meets_5s_fraction", "draws": len(draws), "low": None,
                     "median": float(np.mean([d["attainment"] >= ATTAINMENT for d in draws.values()])), "high": None})
    fixed_label, auto_label = list(per)
    paired = [1.0 - per[auto_label][k]["usd_per_day"] / per[fixed_label][k]["usd_per_day"]
              for k in per[fixed_label] if k in per[auto_label]]
    rows.append({"deployment": f"{auto_label} vs {fixed_label}", "metric": "saving", "draws": len(paired),
                 **band(paired, 10, 90)})
    return pa.Table.from_pylist(rows)


def attainment(requests_path: Path, ttft_s: float = SLO_TTFT_S, tpot_s: float = SLO_TPOT_S) -> float:
    """Fraction of all requests (failed and rejected count as missing it) within both targets."""
    t = pq.read_table(requests_path, columns=["status", "ttft_s", "tpot_s"])
    ok = np.array([s == "completed" for s in t.column("status").to_pylist()])
    ttft = t.column("ttft_s").to_numpy(zero_copy_only=False)
    tpot = np.nan_to_num(t.column("tpot_s").to_numpy(zero_copy_only=False), nan=0.0)
    return float(np.mean(ok & (ttft <= ttft_s) & (tpot <= tpot_s))) if len(ok) else 0.0


def _label(row: dict[str, Any]) -> str:
    if row.get("autoscale") in (None, "none"):
        return f"fixed {row['config_dp']}"
    policy = f"autoscaled ({row['autoscale']})"
    return f"{policy} N+1" if row.get("autoscale.headroom") == 1 else policy


def run(root: str | Path, quick: bool = False) -> dict[str, pa.Table]:
    """Run the study under ``root``; returns (and saves) the ``runs`` and ``slo_levels`` tables."""
    root = Path(root)
    sweep = run_points(BASE, points(quick), root)
    rows = []
    for i, r in enumerate(sweep.to_pylist()):
        job = root / str(r.get("job", i))
        faults = r.get("faults") or "none"
        scale = float(r.get("faults.rate_scale") or 0.0) if faults != "none" else 0.0
        row = {"deployment": _label(r), "faults_rate_scale": scale, "max_replicas": int(r["config_dp"]),
               "requests": int(r["requests_total"]), "completed": int(r["requests_completed"]),
               "failed": int(r.get("requests_failed") or 0),
               "ttft_p50_s": r["ttft_p50_s"], "ttft_p99_s": r["ttft_p99_s"], "tpot_p99_s": r["tpot_p99_s"],
               "usd_per_day": _usd_per_day(r), "gpu_hours": _gpu_hours(r),
               "mean_replicas": r.get("replicas_mean_alive") or float(r["config_dp"]),
               "faults": int(r.get("faults_count") or 0), "restarted": int(r.get("faults_requests_restarted") or 0),
               "attainment": attainment(job / "requests.parquet")}
        for level in SLO_LEVELS:
            row[f"attainment_ttft_{level:g}s"] = attainment(job / "requests.parquet", ttft_s=level)
        rows.append(row)
    runs = pa.Table.from_pylist(rows)
    return save_tables({"runs": runs, "slo_levels": slo_costs(runs), "bands": bands(root / "bands", quick)}, root, NAME)


def _gpu_hours(r: dict[str, Any]) -> float:
    paid = r.get("cost_gpu_hours_paid")
    return float(paid) if paid is not None else float(r["cost_gpus"]) * float(r["throughput_makespan_s"]) / 3600.0


def _usd_per_day(r: dict[str, Any]) -> float:
    """The run's rented cost per day: its mean $ per hour (GPU-hours alive) x 24."""
    return float(r["cost_usd_per_hour"]) * 24.0


def hourly_replicas(replicas_path: Path, hours: int = 24) -> np.ndarray:
    """Replicas alive (paid for), time-averaged over each hour of the run, from ``replicas.parquet``."""
    t = pq.read_table(replicas_path, columns=["time_s", "alive"]).to_pydict()
    times = np.append(np.asarray(t["time_s"], dtype=float), hours * 3600.0)
    alive = np.asarray(t["alive"], dtype=float)
    edges = np.arange(hours + 1) * 3600.0
    out = np.zeros(hours)
    for k in range(len(alive)):                 # the count holds from times[k] to times[k + 1]
        lo, hi = times[k], min(times[k + 1], edges[-1])
        if hi <= lo:
            continue
        first, last = int(lo // 3600), min(int(np.ceil(hi / 3600)), hours)
        for h in range(first, last):
            out[h] += alive[k] * max(0.0, min(hi, edges[h + 1]) - max(lo, edges[h]))
    return out / 3600.0


def slo_costs(runs: pa.Table) -> pa.Table:
    """Per SLO level (TTFT target, TPOT ``SLO_TPOT_S``, ``ATTAINMENT`` of requests) and fault
    setting: the cheapest of the fixed fleets run meeting it (with faults only the largest is
    run) and each autoscaled deployment's cost and whether it meets it."""
    out = []
    rows = runs.to_pylist()
    for scale in sorted({r["faults_rate_scale"] for r in rows}):
        group = [r for r in rows if r["faults_rate_scale"] == scale]
        for level in SLO_LEVELS:
            key = f"attainment_ttft_{level:g}s"
            fixed = [r for r in group if r["deployment"].startswith("fixed") and r[key] >= ATTAINMENT]
            best = min(fixed, key=lambda r: r["usd_per_day"]) if fixed else None
            tried = sorted(r["max_replicas"] for r in group if r["deployment"].startswith("fixed"))
            entry: dict[str, Any] = {"faults_rate_scale": scale, "slo_ttft_s": level,
                                     "fixed_sizes_run": ",".join(map(str, tried)),
                                     "fixed_replicas": best["max_replicas"] if best else None,
                                     "fixed_usd_per_day": best["usd_per_day"] if best else None}
            for name in AUTOSCALED:
                a = next((r for r in group if r["deployment"] == name), None)
                entry[f"{name} usd_per_day"] = a["usd_per_day"] if a else None
                entry[f"{name} meets"] = bool(a and a[key] >= ATTAINMENT)
            out.append(entry)
    return pa.Table.from_pylist(out)
