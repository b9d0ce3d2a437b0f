"""``python -m sim.procure``: the cheapest fleet that serves a workload within latency targets.

A Hydra app over the usual config groups plus ``slo.ttft_p99_s``, ``slo.tpot_p99_s``, the
search space under ``search.*`` and ``sensitivity.*`` (``conf/procure.yaml``). It prunes the
space with the analytic model and confirms with discrete-event runs on the trace
(:mod:`sim.tools.procurement.search`), then, for the chosen configuration, moves each hardware parameter
and the price by +/-``sensitivity.delta`` and replays ``sensitivity.seeds`` bootstrap draws of
the trace (:mod:`sim.tools.procurement.sensitivity`). Writes into its run directory:

* ``procure.parquet``: every configuration considered (config columns, analytic verdict,
  and for simulated ones latency percentiles, goodput, cost, energy);
* ``procure.md``: the ranked report naming the best configuration and the one a step
  cheaper that misses, the Pareto frontier of p99 TPOT vs cost, the sensitivity table;
* ``procure_frontier.png`` and ``sensitivity.png`` (tornado plot), ``sensitivity.parquet``;

and prints, last, one JSON line with a ``best`` object (``hardware``, ``gpus``, ``tp``, ``pp``,
``replicas``, ``usd_per_million_output_tokens``, ``ttft_p99_s``, ``tpot_p99_s``).
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sim.app import evaluate
from sim.build import build_step_model, load_workload
from sim.config.compose import check_overrides, overrides_for, resolved
from sim.config.parse import load_hardware, parse_config
from sim.config.presets import CONF_DIR, check_group_choices
from sim.cost.analytic import pareto_mask, steady_step_s
from sim.errors import ConfigError
from sim.policy.routing import ROUTERS
from sim.tools.cli import check_output_dirs, guarded
from sim.tools.procurement.search import (
    Caps,
    Candidate,
    Layout,
    LayoutBound,
    PoolBound,
    Slo,
    TrafficStats,
    candidates,
    confirm_once,
    cross_pool_candidates,
    descend,
    layout_bound,
    mix_candidates,
    order,
    pool_bound,
    pool_candidates,
    search,
    search_status,
)
from sim.tools.procurement.sensitivity import plot_tornado, sensitivity, tornado_rows
from sim.tools.uncertainty import UncertaintyConfig, draw_bands

SEARCH_KEYS = ("hardware", "tp", "pp", "max_batch_size", "max_tokens_per_step", "max_gpus", "max_replicas", "max_runs",
               "disagg", "fleet_mix", "mix_router", "budget_usd_per_hour", "power_kW", "headroom")


def _int_list(name: str, value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"search.{name}={value!r} must be a list of integers >= 1")
    return [int(v) for v in values]


def traffic_stats(cfg_map: dict[str, Any]) -> TrafficStats:
    table = load_workload(parse_config(cfg_map))
    prompts = np.asarray(table.prompt_tokens, dtype=float)
    outputs = np.asarray(table.output_tokens, dtype=float)
    arrival = np.asarray(table.arrival_s, dtype=float)
    duration = float(arrival[-1] - arrival[0]) or 1.0
    cum = np.concatenate([[0.0], np.cumsum(prompts)])
    windows = []
    # bursts from a second to an hour (the longer windows only where the trace lasts that long:
    # under a rate profile they carry its peak hours)
    for w in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3600.0):
        if w > 100.0 and w > duration:
            break
        end = np.searchsorted(arrival, arrival + w, side="right")   # requests in [t_i, t_i + w]
        windows.append((w, float(np.max(cum[end] - cum[np.arange(len(arrival))]))))
    return TrafficStats(len(table), duration, float(prompts.mean()), float(outputs.mean()),
                        float(np.percentile(prompts, 99)), tuple(windows))


def deployment(base: dict[str, Any], layout: Layout, replicas: int, prefill_replicas: int = 0,
               mix: tuple[tuple[Layout, int], ...] = (), mix_router: str = "least_outstanding_time") -> dict[str, Any]:
    """The run config of ``replicas`` x ``layout`` (topology chosen to hold the GPUs); with
    ``prefill_replicas`` > 0, disaggregated pools of that many prefill replicas and the rest
    decoding (both on the run's hardware, so a sensitivity study moves both). With ``mix``
    (layout, replicas) groups of different hardware: a mixed fleet (``fleet:``, each group on a
    topology its hardware can have, routed by ``mix_router``) or, with ``prefill_replicas``,
    prefill and decode pools on the two groups' hardware."""
    cfg = json.loads(json.dumps(base))
    hw_map = dict(cfg["hardware_presets"][layout.hardware])
    cfg["hardware"] = hw_map
    gpus = replicas * layout.gpus_per_replica
    topo = dict(cfg["topology"])
    if hw_map["scaleup_link"] == "pcie":
        topo["kind"] = "pcie_box"
    elif gpus > int(topo.get("gpus_per_node", 8)) or layout.gpus_per_replica > int(topo.get("gpus_per_node", 8)):
        topo["kind"], topo["nodes"] = "multi_node_ib", "auto"
    else:
        topo["kind"] = "hgx"
    cfg["topology"] = topo
    cfg["parallel"] = {**cfg["parallel"], "tp": layout.tp, "pp": layout.pp, "dp": replicas}
    cfg["scheduler"] = {**cfg["scheduler"], "max_batch_size": layout.max_batch_size,
                        "max_tokens_per_step": layout.max_tokens_per_step}
    cfg["output"] = {**cfg["output"], "progress": "never", "write_parquet": False}
    cfg.pop("hardware_presets")
    if mix:
        groups = [{"hardware": lay.hardware, "replicas": r, "tp": lay.tp, "pp": lay.pp} for lay, r in mix]
        if prefill_replicas:
            cfg["topology"] = {**topo, "kind": "multi_node_ib", "nodes": "auto"}
            cfg["parallel"]["dp"] = 1
            cfg["disagg"] = {"mode": "pools", "transfer": "layerwise", "prefill": groups[0], "decode": groups[1]}
        else:
            cfg["topology"] = {**topo, "kind": "hgx"}          # RunConfig.groups() fits each group's topology
            cfg["parallel"]["dp"] = mix[0][1]
            cfg["parallel"]["router"] = mix_router
            cfg["fleet"] = groups
        return cfg
    if prefill_replicas:
        cfg["parallel"]["dp"] = 1
        cfg["topology"] = {**topo, "kind": "multi_node_ib", "nodes": "auto"}
        pool = {"hardware": None, "tp": layout.tp, "pp": layout.pp}
        cfg["disagg"] = {"mode": "pools", "transfer": "layerwise", "prefill": {**pool, "replicas": prefill_replicas},
                         "decode": {**pool, "replicas": replicas - prefill_replicas}}
    return cfg


def goodput(summary_requests, slo: Slo, makespan_s: float) -> float | None:
    """Requests per second whose own TTFT and TPOT meet the targets (one-token outputs: TTFT only)."""
    d = summary_requests
    ttft = d.column("ttft_s").to_numpy()
    tpot = d.column("tpot_s").to_numpy()
    done = d.column("status").to_numpy(zero_copy_only=False) == "completed"
    ok = done & (ttft <= slo.ttft_p99_s) & (np.isnan(tpot) | (tpot <= slo.tpot_p99_s))
    return float(ok.sum()) / makespan_s if makespan_s > 0 else None


def _split(c: Candidate, key: str) -> int | None:
    """The candidate's tp or pp; None for a mix whose groups differ (``groups`` says each)."""
    values = {getattr(lay, key) for lay, _ in c.groups}
    return values.pop() if len(values) == 1 else None


def candidate_row(c: Candidate, bound: LayoutBound | PoolBound | None) -> dict[str, Any]:
    """One row of ``procure.parquet`` (``bound``: the layout's analytic verdict; None for a mix)."""
    s = c.summary or {}
    cost = s.get("cost", {})
    pools = c.prefill_replicas > 0
    if bound is None:
        min_replicas = tok_s = None
    elif isinstance(bound, PoolBound):
        min_replicas, tok_s = bound.min_prefill + bound.min_decode, bound.decode_tok_s
    else:
        min_replicas, tok_s = bound.min_replicas, bound.replica_tok_s
    return {"hardware": "+".join(c.kind), "tp": _split(c, "tp"), "pp": _split(c, "pp"),
            "max_batch_size": c.layout.max_batch_size,
            "max_tokens_per_step": c.layout.max_tokens_per_step, "replicas": c.replicas,
            "prefill_replicas": c.prefill_replicas if pools else None,
            "decode_replicas": c.replicas - c.prefill_replicas if pools else None,
            "fleet": c.label(), "mixed": bool(c.mix),
            "gpus": c.gpus, "analytic_usd_per_hour": c.usd_per_hour, "power_kW": c.power_kW,
            "over_caps": c.over_caps or None, "pruned": c.pruned,
            "analytic_min_replicas": min_replicas, "analytic_replica_tok_s": tok_s,
            "analytic_utilization": c.analytic_utilization, "simulated": c.summary is not None or bool(c.error),
            "meets_slo": c.meets_slo, "error": c.error or None,
            "ttft_p50_s": s.get("ttft_s", {}).get("p50"), "ttft_p99_s": s.get("ttft_s", {}).get("p99"),
            "tpot_p50_s": s.get("tpot_s", {}).get("p50"), "tpot_p99_s": s.get("tpot_s", {}).get("p99"),
            "output_tokens_per_s": s.get("throughput", {}).get("output_tokens_per_s"),
            "goodput_requests_per_s": c.extra.get("goodput"),
            "usd_per_hour": cost.get("usd_per_hour"),
            "usd_per_million_output_tokens": cost.get("usd_per_million_output_tokens"),
            "joules_per_output_token": cost.get("energy", {}).get("joules_per_output_token"),
            "gpu_utilization": cost.get("energy", {}).get("gpu_utilization"),
            "pareto": c.extra.get("pareto"),
            "rerun": shlex.join(c.extra["rerun"]) if "rerun" in c.extra else None}


def infeasible_row(bound) -> dict[str, Any]:
    lay = bound.layout
    return {"hardware": lay.hardware, "tp": lay.tp, "pp": lay.pp, "max_batch_size": lay.max_batch_size,
            "max_tokens_per_step": lay.max_tokens_per_step, "replicas": None, "gpus": None, "mixed": False,
            "pruned": True, "simulated": False, "meets_slo": False, "error": bound.reason, "rerun": None}


def best_json(c: Candidate) -> dict[str, Any]:
    s = c.summary
    assert s is not None, "the best candidate was simulated"
    return {"hardware": "+".join(c.kind), "gpus": c.gpus, "tp": _split(c, "tp"), "pp": _split(c, "pp"),
            "replicas": c.replicas, "prefill_replicas": c.prefill_replicas or None,
            "decode_replicas": c.replicas - c.prefill_replicas if c.prefill_replicas else None,
            "fleet": c.label(),
            "groups": [{"hardware": lay.hardware, "replicas": r, "tp": lay.tp, "pp": lay.pp} for lay, r in c.groups],
            "max_batch_size": c.layout.max_batch_size,
            "max_tokens_per_step": c.layout.max_tokens_per_step,
            "usd_per_million_output_tokens": s["cost"]["usd_per_million_output_tokens"],
            "usd_per_hour": s["cost"]["usd_per_hour"], "power_kW": c.power_kW,
            "goodput_requests_per_s": c.extra.get("goodput"),
            "ttft_p99_s": s["ttft_s"]["p99"], "tpot_p99_s": s["tpot_s"]["p99"],
            "rerun": c.extra.get("rerun", [])}


def _figure(table: pa.Table, y: str, x: str):
    """(pyplot, figure, axes, the table as columns, the rows simulated with both ``x`` and ``y``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = table.to_pydict()
    sim = [i for i in range(table.num_rows) if d[y][i] is not None and d[x][i]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    return plt, fig, ax, d, sim


def plot_frontier(table: pa.Table, path: Path, slo: Slo) -> None:
    plt, fig, ax, d, sim = _figure(table, "tpot_p99_s", "usd_per_million_output_tokens")
    if sim:
        cost = np.array([d["usd_per_million_output_tokens"][i] for i in sim])
        lat = np.array([d["tpot_p99_s"][i] for i in sim]) * 1e3
        ok = np.array([bool(d["meets_slo"][i]) for i in sim])
        front = pareto_mask(-lat, cost)
        ax.scatter(cost[~ok], lat[~ok], marker="x", color="tab:red", label="misses the SLOs")
        ax.scatter(cost[ok], lat[ok], marker="o", color="tab:green", label="meets the SLOs")
        _front(ax, cost, lat, front, [d["fleet"][k] for k in sim], "Pareto frontier")
    ax.axhline(slo.tpot_p99_s * 1e3, color="grey", lw=0.8, ls=":", label="TPOT p99 target")
    _finish(plt, fig, ax, path, "$ per million output tokens (simulated)", "TPOT p99 (ms)",
            "Simulated configurations: latency vs cost")


def _front(ax, x: np.ndarray, y: np.ndarray, front: np.ndarray, labels: list[str], name: str) -> None:
    """The Pareto points joined, every point labelled with its fleet."""
    o = np.argsort(x[front])
    ax.plot(x[front][o], y[front][o], "k--", lw=1, label=name)
    for i, label in enumerate(labels):
        ax.annotate(label, (x[i], y[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v: Any, fmt: str) -> str:
    return format(v, fmt) if v is not None else "-"


def _why_missed(c: Candidate) -> str:
    s = c.summary or {}
    return c.error or (f"TTFT p99 {s['ttft_s']['p99']:.3f} s, TPOT p99 {s['tpot_s']['p99'] * 1e3:.1f} ms, "
                       f"{s['requests']['completed']}/{s['requests']['total']} completed")


def report(rows: list[dict[str, Any]], best: Candidate, cheaper: Candidate | None, slo: Slo, stats: TrafficStats,
           sens: list[dict[str, Any]] | None, caps: Caps | None = None,
           by_kind: dict[tuple[str, ...], tuple[Candidate | None, Candidate | None]] | None = None,
           bands: dict[str, Any] | None = None, kind_status: dict[tuple[str, ...], str] | None = None) -> str:
    lines = ["# Procurement report", "",
             f"Targets: TTFT p99 <= {slo.ttft_p99_s} s, TPOT p99 <= {slo.tpot_p99_s} s. Traffic: {stats.requests} "
             f"requests over {stats.duration_s:.0f} s, mean prompt {stats.mean_prompt:.0f}, mean output "
             f"{stats.mean_output:.0f} tokens ({stats.output_tokens_per_s:.0f} output tok/s).", ""]
    if caps is not None and (caps.budget_usd_per_hour or caps.power_kW or caps.headroom):
        lines += [f"Caps: budget {_fmt(caps.budget_usd_per_hour, '.2f')} $/h, facility power "
                  f"{_fmt(caps.power_kW, '.1f')} kW (every GPU at TDP plus its host, times the PUE), headroom "
                  f"N+{caps.headroom}.", ""]
    b = best_json(best)
    lines += ["## Best", "", f"**{best.label()}** "
              f"(max batch {b['max_batch_size']}, {b['max_tokens_per_step']} tokens/step, {b['gpus']} GPUs, "
              f"{b['power_kW']:.1f} kW): ${b['usd_per_million_output_tokens']:.3f} per "
              f"million output tokens, ${b['usd_per_hour']:.2f}/h, TTFT p99 {b['ttft_p99_s']:.3f} s, "
              f"TPOT p99 {b['tpot_p99_s'] * 1e3:.1f} ms.", "",
              "Reproduce it: `python -m sim " + shlex.join(b["rerun"]) + "`", ""]
    if cheaper is not None:
        lines += [f"One step cheaper: {cheaper.label()} (max batch {cheaper.layout.max_batch_size}, "
                  f"{cheaper.layout.max_tokens_per_step} tokens/step, ${cheaper.usd_per_hour:.2f}/h "
                  f"analytic) misses: {_why_missed(cheaper)}.", ""]
    if bands:
        lo, hi = bands["percentiles"]
        what = " and ".join(w for w, on in (("the calibration's parameter uncertainty", bands["calibration"]),
                                            ("redrawn traffic", bands["traffic"])) if on)
        lines += ["## Uncertainty of the best configuration", "",
                  f"{bands['draws']} draws of {what} (uncertainty.parquet); {lo:g}th / 50th / {hi:g}th percentile. "
                  f"The targets are met in {bands['meets_slo_fraction']:.0%} of the draws.", "",
                  "| metric | base | low | median | high |", "|---|---|---|---|---|"]
        base_s = best.summary or {}
        base_vals = {"usd_per_million_output_tokens": base_s["cost"]["usd_per_million_output_tokens"],
                     "ttft_p99_s": base_s["ttft_s"]["p99"], "tpot_p99_s": base_s["tpot_s"]["p99"],
                     "goodput_requests_per_s": best.extra.get("goodput")}
        for key, label, fmt in (("usd_per_million_output_tokens", "$ per million output tokens", ".3f"),
                                ("ttft_p99_s", "TTFT p99 (s)", ".3f"), ("tpot_p99_s", "TPOT p99 (s)", ".4f"),
                                ("goodput_requests_per_s", "goodput (requests/s)", ".2f")):
            b = bands[key]
            lines.append(f"| {label} | {_fmt(base_vals[key], fmt)} | {_fmt(b['low'], fmt)} | "
                         f"{_fmt(b['median'], fmt)} | {_fmt(b['high'], fmt)} |")
        lines.append("")
    if by_kind:
        lines += ["## Cheapest fleet of each hardware kind (search.fleet_mix)", "",
                  "Each kind searched on its own, cheapest first, confirmed by simulation; the fleet one step "
                  "cheaper of the same kind simulated too (where none meets the targets, the dearest fleet of the "
                  "kind within the limits and caps is simulated and shown to miss).", "",
                  "| hardware | cheapest meeting the targets | GPUs | kW | $/h | TTFT p99 s | TPOT p99 ms | "
                  "one step cheaper (misses) |", "|---|---|---|---|---|---|---|---|"]
        for kind, (kb, kc) in by_kind.items():
            if kb is None:
                dearest = ("none within the caps" if kc is None else
                           f"the dearest within the limits and caps, {kc.label()}: {_why_missed(kc)}")
                if (kind_status or {}).get(kind) == "cut short":
                    dearest = "search cut short by search.max_runs: not compared (raise it)"
                lines.append(f"| {'+'.join(kind)} | none | - | - | - | - | - | {dearest} |")
                continue
            ks = kb.summary or {}
            lines.append(f"| {'+'.join(kind)} | {kb.label()} | {kb.gpus} | {kb.power_kW:.1f} | "
                         f"{ks['cost']['usd_per_hour']:.2f} | {ks['ttft_s']['p99']:.3f} | "
                         f"{ks['tpot_s']['p99'] * 1e3:.1f} | "
                         f"{'-' if kc is None else kc.label() + ': ' + _why_missed(kc)} |")
        lines.append("")
    lines += ["## Simulated configurations (cheapest first)", "",
              "| fleet | max batch | tokens/step | GPUs | kW | $/h | $/M tok | TTFT p99 s | TPOT p99 ms | goodput req/s "
              "| meets | Pareto |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sim = sorted((r for r in rows if r.get("simulated")), key=lambda r: r["analytic_usd_per_hour"])
    for r in sim:
        lines.append(f"| {r['fleet']} | {r['max_batch_size']} | {r['max_tokens_per_step']} | "
                     f"{r['gpus']} | {_fmt(r['power_kW'], '.1f')} | "
                     f"{_fmt(r['analytic_usd_per_hour'], '.2f')} | {_fmt(r['usd_per_million_output_tokens'], '.3f')} | "
                     f"{_fmt(r['ttft_p99_s'], '.3f')} | {_fmt(r['tpot_p99_s'] and r['tpot_p99_s'] * 1e3, '.1f')} | "
                     f"{_fmt(r['goodput_requests_per_s'], '.2f')} | {'yes' if r['meets_slo'] else 'no'} | "
                     f"{'yes' if r.get('pareto') else ''} |")
    pruned = sum(1 for r in rows if r.get("pruned") and not r.get("simulated"))
    over = sum(1 for r in rows if r.get("over_caps"))
    lines += ["", f"{len(rows)} configurations considered, {len(sim)} simulated, {pruned} pruned by the analytic model "
                  "(predicted to miss the targets or infeasible)"
              + (f", {over} over the caps" if over else "") + "; see procure.parquet. Pareto: no other simulated "
              "configuration has at least its goodput (requests per second meeting both targets) for at most its $/h, "
              "and more goodput or a lower $/h."]
    if sens:
        lines += ["", "## Sensitivity of the best configuration", "",
                  "| parameter | change | $/M tok | TPOT p99 ms |", "|---|---|---|---|"]
        for r in sens:
            lines.append(f"| {r['parameter']} | {r['change']} | {r['usd_per_million_output_tokens']:.3f} | "
                         f"{r['tpot_p99_s'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def procure(cfg_map: dict[str, Any], out: Path) -> dict[str, Any]:
    slo_map = cfg_map.pop("slo", None) or {}
    search_map = cfg_map.pop("search", None) or {}
    sens_map = cfg_map.pop("sensitivity", None) or {}
    ucfg = UncertaintyConfig.from_map(cfg_map.pop("uncertainty", None))
    unknown = sorted(set(search_map) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"search has unknown field(s) {unknown}; allowed: {list(SEARCH_KEYS)}")
    slo = Slo(slo_map.get("ttft_p99_s"), slo_map.get("tpot_p99_s"))  # type: ignore[arg-type]  # Slo checks them
    hw_names = search_map.get("hardware") or [cfg_map["hardware"]["name"]]
    hw_names = hw_names if isinstance(hw_names, (list, tuple)) else [hw_names]
    presets = {}
    for name in hw_names:
        presets[name] = load_hardware_map(name)
    tps, pps = _int_list("tp", search_map.get("tp", [1, 2, 4, 8])), _int_list("pp", search_map.get("pp", [1]))
    mbs = _int_list("max_batch_size", search_map.get("max_batch_size", [cfg_map["scheduler"]["max_batch_size"]]))
    mts = _int_list("max_tokens_per_step",
                    search_map.get("max_tokens_per_step", [cfg_map["scheduler"]["max_tokens_per_step"]]))
    max_gpus = _int_list("max_gpus", search_map.get("max_gpus", 32))[0]
    max_replicas = _int_list("max_replicas", search_map.get("max_replicas", 16))[0]
    max_runs = _int_list("max_runs", search_map.get("max_runs", 40))[0]
    flags = {}
    for key in ("disagg", "fleet_mix"):
        flags[key] = search_map.get(key, False)
        if not isinstance(flags[key], bool):
            raise ConfigError(f"search.{key}={flags[key]!r} must be true or false")
    disagg, fleet_mix = flags["disagg"], flags["fleet_mix"]
    mix_router = search_map.get("mix_router", "least_outstanding_time")
    if mix_router not in ROUTERS:
        raise ConfigError(f"search.mix_router={mix_router!r} is not one of {list(ROUTERS)}")
    if mix_router == "prefix_aware" and not cfg_map["scheduler"].get("prefix_caching"):
        raise ConfigError("search.mix_router=prefix_aware needs scheduler.prefix_caching=true")
    caps = Caps(search_map.get("budget_usd_per_hour"), search_map.get("power_kW"), search_map.get("headroom", 0))
    base = {**cfg_map, "hardware_presets": presets}
    stats = traffic_stats(cfg_map)
    bounds = []
    pool_bounds: list[PoolBound] = []
    for name in hw_names:
        for tp in tps:
            for pp in pps:
                for mb in mbs:
                    for mt in mts:
                        lay = Layout(name, tp, pp, mb, mt)
                        try:
                            model = build_step_model(deployment(base, lay, 1))
                        except ConfigError as exc:
                            bounds.append(LayoutBound(lay, False, str(exc).splitlines()[0]))
                            continue
                        bounds.append(layout_bound(lay, model, stats, slo, steady_step_s))
                        if disagg:
                            pool_bounds.append(pool_bound(lay, model, stats, slo, steady_step_s,
                                                          bounds[-1].prefill_p99_s))
    cost_cfg = parse_config(cfg_map).cost
    gpn = int(cfg_map["topology"].get("gpus_per_node", 8))
    limits = (stats, cost_cfg, load_hardware, max_gpus, max_replicas, gpn)
    cands = (candidates(bounds, *limits, headroom=caps.headroom)
             + pool_candidates(pool_bounds, *limits, headroom=caps.headroom))
    if fleet_mix:
        cands += mix_candidates(bounds, stats, slo, *limits[1:], headroom=caps.headroom)
        cands += cross_pool_candidates(pool_bounds, *limits, headroom=caps.headroom)
    cands = order(cands)
    caps.apply(cands, cost_cfg, load_hardware)
    allowed = [c for c in cands if not c.over_caps]

    def evaluated(run_cfg: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        """One simulation: its summary and goodput."""
        summary, result = evaluate(run_cfg)
        return summary, goodput(result.requests, slo, summary["throughput"]["makespan_s"])

    def simulate(c: Candidate) -> dict[str, Any]:
        run_cfg = deployment(base, c.layout, c.replicas, c.prefill_replicas, c.mix, mix_router)
        c.extra["rerun"] = overrides_for(run_cfg)       # python -m sim with these reproduces the point
        summary, c.extra["goodput"] = evaluated(run_cfg)
        return summary

    by_kind: dict[tuple[str, ...], tuple[Candidate | None, Candidate | None]] = {}
    kind_status: dict[tuple[str, ...], str] = {}
    if fleet_mix:
        # every hardware kind (one preset, or two mixed) searched on its own, so the cheapest
        # fleet of each is confirmed by simulation and the mixes can be compared with them
        for kind in sorted({c.kind for c in cands}, key=lambda k: (len(k), k)):
            mine = [c for c in allowed if c.kind == kind]
            kb, kc, kind_status[kind] = search_status(mine, slo, simulate, max_runs)
            if kind_status[kind] == "none" and mine:
                # none meets: the dearest fleet of the kind within the caps is simulated too, so
                # "none" is confirmed by a run and not only by the analytic bound (should it meet
                # the targets, the pruning was wrong: step down to the cheapest that does)
                if confirm_once(mine[-1], slo, simulate):
                    kb, kc = descend(mine, len(mine) - 1, slo, simulate)
                    kind_status[kind] = "found"
                else:
                    kc = mine[-1]
            by_kind[kind] = (kb, kc)
        # a kind cut short by search.max_runs is left out of the comparison (the report says so)
        found = [(b, c) for b, c in by_kind.values() if b is not None]
        best, cheaper = min(found, key=lambda bc: (simulated_usd_per_hour(bc[0]), bc[0].gpus, bc[0].label())) \
            if found else (None, None)
    else:
        best, cheaper = search(allowed, slo, simulate, max_runs)
    mark_pareto(cands)
    by_layout = {b.layout: b for b in bounds}
    by_pools = {b.layout: b for b in pool_bounds}
    rows = ([candidate_row(c, None if c.mix else by_pools[c.layout] if c.prefill_replicas else by_layout[c.layout])
             for c in cands]
            + [infeasible_row(b) for b in bounds if not b.feasible])
    blank = Layout("", 1, 1, 1, 1)
    columns = list(candidate_row(Candidate(blank, 1, 0.0, True, 0.0), LayoutBound(blank, False)))
    rows = [{k: r.get(k) for k in columns} for r in rows]  # infeasible layouts lack the simulated columns
    table = pa.Table.from_pylist(rows) if rows else pa.table({k: pa.array([], pa.null()) for k in columns})
    pq.write_table(table, out / "procure.parquet")
    plot_frontier(table, out / "procure_frontier.png", slo)
    plot_pareto(table, out / "procure_pareto.png")
    if best is None:
        simulated = sum(1 for c in cands if c.meets_slo is not None)
        why = next((f"; e.g. {b.layout.hardware} TP{b.layout.tp}: {b.reason}" for b in bounds if not b.feasible), "")
        capped = (f", {len(cands) - len(allowed)} excluded by search.budget_usd_per_hour / search.power_kW / "
                  f"search.headroom" if len(allowed) < len(cands) else "")
        raise ConfigError(f"no configuration within search.max_gpus={max_gpus} meets TTFT p99 <= {slo.ttft_p99_s} s and "
                          f"TPOT p99 <= {slo.tpot_p99_s} s ({len(cands)} candidates{capped}, {simulated} simulated; "
                          f"see {out / 'procure.parquet'}){why}; widen search.* or relax slo.*")
    sens = None
    assert best.summary is not None, "the best candidate was simulated"
    if sens_map.get("enabled", True):
        sens = sensitivity(deployment(base, best.layout, best.replicas, best.prefill_replicas, best.mix, mix_router),
                           lambda c: evaluate(c)[0],
                           best.summary,
                           float(sens_map.get("delta", 0.2)), int(sens_map.get("seeds", 3)))
        pq.write_table(pa.Table.from_pylist(sens), out / "sensitivity.parquet")
        plot_tornado(tornado_rows(sens, best.summary), out / "sensitivity.png")
    bands = None
    if ucfg.draws:
        def measure(run_cfg: dict[str, Any]) -> dict[str, Any]:
            summary, good = evaluated(run_cfg)
            cost = summary["cost"]
            return {"meets_slo": slo.met(summary), "usd_per_hour": cost["usd_per_hour"],
                    "usd_per_million_output_tokens": cost["usd_per_million_output_tokens"],
                    "ttft_p99_s": summary["ttft_s"]["p99"], "tpot_p99_s": summary["tpot_s"]["p99"],
                    "goodput_requests_per_s": good}
        draw_rows, bands = draw_bands(deployment(base, best.layout, best.replicas, best.prefill_replicas, best.mix,
                                                 mix_router), measure, ucfg)
        pq.write_table(pa.Table.from_pylist(draw_rows), out / "uncertainty.parquet")
    (out / "procure.md").write_text(report(rows, best, cheaper, slo, stats, sens, caps, by_kind, bands, kind_status))
    result = {"best": {**best_json(best), "bands": bands} if bands else best_json(best), "one_step_cheaper": None if cheaper is None else short_json(cheaper),
              "simulated": sum(1 for c in cands if c.meets_slo is not None), "candidates": len(cands),
              "over_caps": len(cands) - len(allowed), "run_dir": str(out)}
    if fleet_mix:
        result["by_kind"] = {"+".join(k): {"status": kind_status[k], "best": None if b is None else short_json(b),
                                           "one_step_cheaper" if b is not None else "dearest_within_caps":
                                           None if c is None else short_json(c)} for k, (b, c) in by_kind.items()}
    return result


def simulated_usd_per_hour(c: Candidate) -> float:
    """The simulated fleet's $/h (what the fleet-mix search compares kinds by)."""
    assert c.summary is not None, "a kind's best was simulated"
    return float(c.summary["cost"]["usd_per_hour"])


def short_json(c: Candidate) -> dict[str, Any]:
    """A simulated candidate in the last JSON line (the one a step cheaper, each kind's best)."""
    s = c.summary or {}
    return {"hardware": "+".join(c.kind), "fleet": c.label(), "gpus": c.gpus, "tp": _split(c, "tp"), "pp": _split(c, "pp"),
            "replicas": c.replicas, "prefill_replicas": c.prefill_replicas or None, "meets_slo": c.meets_slo,
            "usd_per_hour": s.get("cost", {}).get("usd_per_hour"), "power_kW": c.power_kW,
            "ttft_p99_s": s.get("ttft_s", {}).get("p99"), "tpot_p99_s": s.get("tpot_s", {}).get("p99")}


def mark_pareto(cands: list[Candidate]) -> None:
    """``extra["pareto"]`` on every simulated candidate: no other has at least its goodput for at
    most its simulated $/h, and more goodput or a lower $/h."""
    sim = [c for c in cands if c.summary is not None and c.extra.get("goodput") is not None]
    if not sim:
        return
    keep = pareto_mask(np.array([c.extra["goodput"] for c in sim]),
                       np.array([c.summary["cost"]["usd_per_hour"] for c in sim]))  # type: ignore[index]
    for c, k in zip(sim, keep):
        c.extra["pareto"] = bool(k)


def plot_pareto(table: pa.Table, path: Path) -> None:
    """Goodput vs $/h of every simulated configuration, the Pareto set joined."""
    plt, fig, ax, d, sim = _figure(table, "goodput_requests_per_s", "usd_per_hour")
    if sim:
        cost = np.array([d["usd_per_hour"][i] for i in sim])
        good = np.array([d["goodput_requests_per_s"][i] for i in sim])
        ok = np.array([bool(d["meets_slo"][i]) for i in sim])
        front = np.array([bool(d["pareto"][i]) for i in sim])
        mixed = np.array([bool(d["mixed"][i]) for i in sim])
        for sel, marker, label in ((ok & ~mixed, "o", "one hardware, meets"), (ok & mixed, "D", "mixed, meets"),
                                   (~ok, "x", "misses the SLOs")):
            if sel.any():
                ax.scatter(cost[sel], good[sel], marker=marker, label=label)
        _front(ax, cost, good, front, [d["fleet"][k] for k in sim], "Pareto set")
    _finish(plt, fig, ax, path, "$ per hour (simulated)", "goodput (requests/s meeting both targets)",
            "Simulated fleets: goodput vs cost")


def load_hardware_map(name: str) -> dict[str, Any]:
    from sim.config.presets import load_preset
    load_hardware(name)  # validates (one-line error for an unknown preset)
    return load_preset("hardware", name)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="procure")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)

    def go() -> None:
        container = resolved(cfg)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(json.dumps(procure(container, out)))
    guarded(go)()


def entry() -> None:
    """``python -m sim.procure``: one-line errors for bad overrides, then the Hydra app."""
    guarded(check_group_choices)(sys.argv[1:])
    guarded(check_output_dirs)(sys.argv[1:])
    guarded(check_overrides)(sys.argv[1:], "procure")
    main()
