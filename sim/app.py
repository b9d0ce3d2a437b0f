"""One run end to end: validate config, build, simulate, write outputs, summarize.

``steps.parquet`` and ``requests.parquet`` stream as the run goes; ``summary.json`` follows.
Every file appears under its final name only when complete, so an interrupted run leaves
readable outputs (:class:`StopRequest`: Ctrl-C, SIGTERM, ``sim.max_wall_s``).
"""
from __future__ import annotations

import gc

from pathlib import Path
from typing import Any, Mapping

from sim.build import build_cluster, build_simulation, load_workload
from sim.config.parse import parse_config
from sim.cost.money import mixed_fleet_cost
from sim.des.simulation import SimResult, StopRequest, simulate
from sim.errors import ConfigError
from sim.observe.metrics import fleet_parts, summarize
from sim.observe.recorder import write_json, write_table

__all__ = ["StopRequest", "evaluate", "run"]


#: What a run writes into its directory.
RUN_OUTPUTS = ("config.yaml", "summary.json", "requests.parquet", "steps.parquet", "transfers.parquet", "faults.parquet",
               "replicas.parquet", "timeline.json", "error.txt")


def claim_run_dir(out: Path, overwrite: bool, own_config: bool = False) -> None:
    """Make ``out`` this run's directory: refuse one holding another run's outputs (a
    ConfigError naming them) unless ``overwrite``, which removes them first so that runs never
    mix. ``own_config``: a ``config.yaml`` there is this run's own (written just before)."""
    out.mkdir(parents=True, exist_ok=True)
    found = [name for name in RUN_OUTPUTS if (out / name).exists() and not (own_config and name == "config.yaml")]
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"hydra.run.dir={out} holds another run's outputs ({', '.join(found)}); "
                          "choose another directory or set output.overwrite=true")
    for name in found:
        (out / name).unlink()


def run(cfg_mapping: Mapping[str, Any], out_dir: str | Path, stop: StopRequest | None = None) -> dict[str, Any]:
    """Simulate, streaming ``steps.parquet`` and ``requests.parquet`` (and ``timeline.json``
    with ``output.timeline``), then write ``summary.json``.

    Each file appears under its final name only when complete. A run stopped early (``stop``
    requested: Ctrl-C, SIGTERM, ``sim.max_wall_s``) still writes all three, with unfinished
    requests marked and ``"complete": false`` in the summary.
    """
    out = Path(out_dir)
    claim_run_dir(out, bool((cfg_mapping.get("output") or {}).get("overwrite", False)), own_config=True)
    summary, _ = evaluate(cfg_mapping, out, stop)
    write_json(summary, out / "summary.json")
    return summary


def evaluate(cfg_mapping: Mapping[str, Any], out_dir: Path | None = None,
             stop: StopRequest | None = None) -> tuple[dict[str, Any], SimResult]:
    """Simulate one config; the summary (latency, throughput, cost, energy, memory) and the
    result. With ``out_dir`` (and ``output.write_parquet``), the tables are written there."""
    cfg = parse_config(cfg_mapping)
    table = load_workload(cfg)
    plan = build_cluster(cfg)
    written = out_dir if cfg.output.write_parquet else None
    steps_path = written / "steps.parquet" if written is not None else None
    requests_path = written / "requests.parquet" if written is not None else None
    if stop is None:
        stop = StopRequest()
    stop.arm(cfg.sim.max_wall_s)
    timeline_path = out_dir / "timeline.json" if cfg.output.timeline and out_dir is not None else None
    transfers_path = written / "transfers.parquet" if written is not None and cfg.disagg.enabled else None
    simulation = build_simulation(cfg, plan, table, steps_path, requests_path, timeline_path, transfers_path)
    workload = {"source": table.source, "requests": len(table), "clamped_rows": table.clamped_rows,
                "rebased_s": table.rebased_s}
    del table                   # the simulation holds what it replays
    result = simulate(simulation, stop)
    del simulation
    gc.collect()                # its processes and environment form cycles: free the trace before the summary
    summary = summarize(result.request_stats or result.requests, result.step_sums, result.steps, wall_s=result.wall_s, events=result.events,
                        sim_time_s=result.sim_time_s)
    summary["workload"] = workload
    summary["complete"] = result.complete
    if not result.complete and result.stop is not None:
        summary["stopped"] = {"reason": result.stop.reason, "message": result.stop.message}
    if result.link_hops is not None:
        summary["sim"]["link_hops"] = result.link_hops
    if result.prefix_cache is not None:
        summary["prefix_cache"] = result.prefix_cache
    if result.swap is not None:
        summary["swap"] = result.swap
    if result.kv_transfer is not None:
        summary["kv_transfer"] = result.kv_transfer
    if result.faults is not None:
        summary["faults"] = result.faults.summary(
            result.sim_time_s, result.lifecycle.alive_gpu_s() if result.lifecycle is not None and cfg.autoscale.enabled else None)
        if written is not None:
            write_table(result.faults.table(), written / "faults.parquet")
    alive = None
    if result.lifecycle is not None:
        summary["replicas"] = result.lifecycle.summary(result.sim_time_s)
        if written is not None:
            write_table(result.lifecycle.table(), written / "replicas.parquet")
        stats = result.request_stats
        if cfg.autoscale.enabled and stats is not None and stats.completed:
            alive = result.lifecycle.alive_gpu_s(stats.first_arrival, stats.last_finish)
    summary["cost"] = mixed_fleet_cost(cfg.cost, fleet_parts(cfg, [r.group for r in plan.replicas],
                                                             result.replica_busy_gpu_s, summary, alive))
    cap = min((r.capacity for r in plan.replicas), key=lambda c: c.tokens)
    summary["config"] = {
        "hardware": "+".join(f"{g.parallel.dp}x{g.hardware.name}" for g in cfg.groups()) if cfg.fleet else cfg.hardware.name, "model": cfg.model.name, "engine": cfg.engine.name,
        # a mixed fleet: one value per group, in fleet order
        **({"tp": [g.parallel.tp for g in cfg.groups()], "pp": [g.parallel.pp for g in cfg.groups()],
            "dp": [g.parallel.dp for g in cfg.groups()]} if cfg.fleet else
           {"tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "dp": cfg.parallel.dp}),
        "fidelity": cfg.network.fidelity, "latency_scale": cfg.network.latency_scale,
        "bandwidth_scale": cfg.network.bandwidth_scale,
        "workload": cfg.workload.path or ("synthetic" if cfg.workload.source == "synthetic" else cfg.workload.trace),
    }
    summary["memory"] = {"weights_GB_per_gpu": cap.weights_GB_per_gpu, "kv_GB_per_gpu": cap.kv_GB_per_gpu,
                         "kv_capacity_tokens_per_replica": cap.tokens}
    return summary, result
