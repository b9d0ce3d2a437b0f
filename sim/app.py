"""One run end to end: validate config, build, simulate, write outputs, summarize.

Outputs are written in the order they become available (requests and steps Parquet first,
then ``summary.json``), so a failure late in a run never loses a finished simulation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .build import build_cluster, load_workload
from .config import parse_config
from .cost import fleet_cost
from .metrics import fleet_use, summarize
from .recorder import write_table
from .simulation import simulate


def run(cfg_mapping: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    cfg = parse_config(cfg_mapping)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = load_workload(cfg)
    plan = build_cluster(cfg)
    result = simulate(cfg, plan, table)
    if cfg.output.write_parquet:
        write_table(result.requests, out / "requests.parquet")
        write_table(result.steps, out / "steps.parquet")
    summary = summarize(result.requests, result.steps, wall_s=result.wall_s, events=result.events)
    summary["cost"] = fleet_cost(cfg.cost, cfg.hardware, fleet_use(cfg, result.gpus, result.gpu_busy_s, summary))
    cap = plan.replicas[0].capacity
    summary["config"] = {
        "hardware": cfg.hardware.name, "model": cfg.model.name, "engine": cfg.engine.name,
        "tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "dp": cfg.parallel.dp,
        "fidelity": cfg.network.fidelity, "latency_scale": cfg.network.latency_scale,
        "bandwidth_scale": cfg.network.bandwidth_scale,
        "workload": cfg.workload.path or ("synthetic" if cfg.workload.source == "synthetic" else cfg.workload.trace),
    }
    summary["memory"] = {"weights_GB_per_gpu": cap.weights_GB_per_gpu, "kv_GB_per_gpu": cap.kv_GB_per_gpu,
                         "kv_capacity_tokens_per_replica": cap.tokens}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
