"""One run end to end: validate config, build, simulate, write outputs, summarize.

Outputs are written in the order they become available (requests and steps Parquet first,
then ``summary.json``), so a failure late in a run never loses a finished simulation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from sim.build import build_cluster, build_simulation, load_workload
from sim.config.parse import parse_config
from sim.cost.money import mixed_fleet_cost
from sim.des.simulation import SimResult, simulate
from sim.observe.metrics import fleet_parts, summarize
from sim.observe.recorder import write_table


def run(cfg_mapping: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Simulate, write ``requests.parquet``/``steps.parquet`` as soon as they exist, then ``summary.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, _ = evaluate(cfg_mapping, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate(cfg_mapping: Mapping[str, Any], out_dir: Path | None = None) -> tuple[dict[str, Any], SimResult]:
    """Simulate one config; the summary (latency, throughput, cost, energy, memory) and the
    tables. With ``out_dir``, the tables are written there (when ``output.write_parquet``)."""
    cfg = parse_config(cfg_mapping)
    table = load_workload(cfg)
    plan = build_cluster(cfg)
    result = simulate(build_simulation(cfg, plan, table))
    if out_dir is not None and cfg.output.write_parquet:
        write_table(result.requests, out_dir / "requests.parquet")
        write_table(result.steps, out_dir / "steps.parquet")
    summary = summarize(result.requests, result.steps, wall_s=result.wall_s, events=result.events)
    summary["cost"] = mixed_fleet_cost(cfg.cost, fleet_parts(cfg, [r.group for r in plan.replicas],
                                                             result.replica_busy_gpu_s, summary))
    cap = min((r.capacity for r in plan.replicas), key=lambda c: c.tokens)
    summary["config"] = {
        "hardware": "+".join(f"{g.parallel.dp}x{g.hardware.name}" for g in cfg.groups()) if cfg.fleet else cfg.hardware.name, "model": cfg.model.name, "engine": cfg.engine.name,
        "tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "dp": cfg.parallel.dp,
        "fidelity": cfg.network.fidelity, "latency_scale": cfg.network.latency_scale,
        "bandwidth_scale": cfg.network.bandwidth_scale,
        "workload": cfg.workload.path or ("synthetic" if cfg.workload.source == "synthetic" else cfg.workload.trace),
    }
    summary["memory"] = {"weights_GB_per_gpu": cap.weights_GB_per_gpu, "kv_GB_per_gpu": cap.kv_GB_per_gpu,
                         "kv_capacity_tokens_per_replica": cap.tokens}
    return summary, result
