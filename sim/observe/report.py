"""A run's summary as a few lines a person reads (``output.format``): what ran, where its
outputs are, requests done, latency percentiles in milliseconds, throughput, cost, energy and
the simulator's wall time, each number rounded to three significant figures."""
from __future__ import annotations

from typing import Any, Mapping


def figure(value: float | None, unit: str = "") -> str:
    """``value`` to three significant figures, thousands separated (``-`` if undefined)."""
    if value is None or value != value:
        return "-"
    v = float(value)
    if v == 0:
        text = "0"
    elif abs(v) >= 100:
        text = f"{v:,.0f}"
    elif abs(v) >= 10:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return text + unit


def human_summary(summary: Mapping[str, Any], run_dir: str) -> str:
    """The summary of one run as text (ends with a newline)."""
    c, r, t, sim = summary["config"], summary["requests"], summary["throughput"], summary["sim"]
    cost = summary["cost"]
    energy = cost.get("energy", {})
    lines = [
        f"{c['model']} on {c['hardware']} (tp {c['tp']}, pp {c['pp']}, dp {c['dp']}), {c['engine']} engine, "
        f"{c['fidelity']} network; workload {c['workload']}",
        f"outputs   {run_dir}",
        f"requests  {r['completed']:,} completed, {r['rejected']:,} rejected, "
        + (f"{r['failed']:,} failed, " if r.get('failed') else "") + f"{r['unfinished']:,} unfinished "
        f"of {r['total']:,}; {r['preemptions']:,} preemptions",
    ]
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E")):
        p = summary[key]
        ms = {k: (None if p[k] is None else p[k] * 1e3) for k in ("mean", "p50", "p90", "p99")}
        lines.append(f"{label:<9} mean {figure(ms['mean'])}  p50 {figure(ms['p50'])}  p90 {figure(ms['p90'])}  "
                     f"p99 {figure(ms['p99'])} ms")
    lines.append(f"output    {figure(t['output_tokens_per_s'])} tokens/s, {figure(t['requests_per_s'])} requests/s "
                 f"over {figure(t['makespan_s'])} s simulated")
    lines.append(f"cost      ${figure(cost.get('usd_per_million_output_tokens'))} per million output tokens "
                 f"(${figure(cost.get('usd_per_hour'))}/h for {cost.get('gpus', '-')} GPUs"
                 + (f", {figure(cost['gpu_hours_paid'])} GPU-hours paid as autoscaled" if "gpu_hours_paid" in cost else "")
                 + f", {cost.get('model', '')}), "
                 f"{figure(energy.get('joules_per_output_token'))} J per output token")
    speed = sim["sim_time_s"] / sim["wall_s"] if sim.get("wall_s") else None
    lines.append(f"wall      {figure(sim['wall_s'])} s ({figure(speed)}x simulated time), "
                 f"{sim['events']:,} events")
    return "\n".join(lines) + "\n"
