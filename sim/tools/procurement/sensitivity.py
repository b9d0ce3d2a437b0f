"""How a configuration's cost per token and p99 TPOT move with its hardware, price and traffic.

Each hardware parameter (HBM bandwidth, peak FLOP/s of every format, per-message link latency,
link bandwidth; of every hardware in a mixed fleet or in disaggregated pools) is moved by
-/+``delta`` in turn and the configuration is simulated again on
the same trace; the price (rent per GPU-hour, or the purchase prices when owning) moves the
cost only, so it is applied to the base run's cost without a new simulation (latency does not
depend on it). The spread over traffic is ``seeds`` bootstrap draws of the trace
(``workload.resample``: same arrival times, request lengths drawn with replacement).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable


def _scaled(cfg: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    change(out)
    return out


def _hardware_maps(c: dict[str, Any]) -> list[dict[str, Any]]:
    """Every hardware mapping of a run config: the run's, each mixed-fleet group's and each
    disaggregated pool's (a preset named by a group is replaced by its mapping so it can move)."""
    from sim.config.presets import load_preset

    maps = [c["hardware"]]
    groups = list(c.get("fleet") or [])
    disagg = c.get("disagg") or {}
    if disagg.get("mode") == "pools":
        groups += [disagg[p] for p in ("prefill", "decode") if disagg.get(p)]
    for g in groups:
        if isinstance(g.get("hardware"), str):
            g["hardware"] = load_preset("hardware", g["hardware"])
        if g.get("hardware") is not None:
            maps.append(g["hardware"])
    return maps


def _flops(f: float) -> Callable[[dict[str, Any]], None]:
    def change(c: dict[str, Any]) -> None:
        for hw in _hardware_maps(c):
            hw["flops_TFLOPs"] = {k: (v * f if v else v) for k, v in hw["flops_TFLOPs"].items()}
    return change


def _hbm(f: float) -> Callable[[dict[str, Any]], None]:
    def change(c: dict[str, Any]) -> None:
        for hw in _hardware_maps(c):
            hw["hbm_bandwidth_GBps"] = hw["hbm_bandwidth_GBps"] * f
    return change


def _set(group: str, key: str, f: float) -> Callable[[dict[str, Any]], None]:
    def change(c: dict[str, Any]) -> None:
        c[group] = {**c[group], key: c[group][key] * f}
    return change


def _row(parameter: str, change: str, summary: dict[str, Any], usd_scale: float = 1.0) -> dict[str, Any]:
    cost = summary["cost"]["usd_per_million_output_tokens"]
    return {"parameter": parameter, "change": change,
            "usd_per_million_output_tokens": None if cost is None else cost * usd_scale,
            "ttft_p99_s": summary["ttft_s"]["p99"], "tpot_p99_s": summary["tpot_s"]["p99"]}


def price_scale(cost: dict[str, Any], f: float) -> float:
    """Factor on the fleet's $/h when every price moves by ``f`` (energy excluded when owning)."""
    if cost["model"] == "rent":
        return f
    return (cost["capex_usd_per_hour"] * f + cost["energy_usd_per_hour"]) / cost["usd_per_hour"]


def sensitivity(cfg: dict[str, Any], evaluate: Callable[[dict[str, Any]], dict[str, Any]],
                base: dict[str, Any], delta: float = 0.2, seeds: int = 3) -> list[dict[str, Any]]:
    """Rows (parameter, change, $/M tokens, TTFT p99, TPOT p99) around the base run ``base``."""
    rows = [_row("base", "0", base)]
    for sign in (-1, 1):
        f = 1.0 + sign * delta
        label = f"{sign * delta:+.0%}"
        for name, change in (("HBM bandwidth", _hbm(f)),
                             ("FLOP/s", _flops(f)),
                             ("link latency", _set("network", "latency_scale", f)),
                             ("link bandwidth", _set("network", "bandwidth_scale", f))):
            rows.append(_row(name, label, evaluate(_scaled(cfg, change))))
        rows.append(_row("price", label, base, price_scale(base["cost"], f)))
    for seed in range(1, seeds + 1):
        def draw(c: dict[str, Any], seed: int = seed) -> None:
            c["workload"] = {**c["workload"], "resample": True}
            c["seed"] = seed
        rows.append(_row("trace replay", f"seed {seed}", evaluate(_scaled(cfg, draw))))
    return rows


def tornado_rows(rows: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Per parameter: the low and high relative change of $/M tokens and of TPOT p99."""
    b_cost = base["cost"]["usd_per_million_output_tokens"]
    b_tpot = base["tpot_s"]["p99"]
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["parameter"] == "base":
            continue
        o = out.setdefault(r["parameter"], {"parameter": r["parameter"], "cost": [], "tpot": []})
        o["cost"].append(r["usd_per_million_output_tokens"] / b_cost - 1.0)
        o["tpot"].append(r["tpot_p99_s"] / b_tpot - 1.0)
    return [{"parameter": k, "cost_low": min(v["cost"]), "cost_high": max(v["cost"]),
             "tpot_low": min(v["tpot"]), "tpot_high": max(v["tpot"])} for k, v in out.items()]


def plot_tornado(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["cost_high"] - r["cost_low"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(rows) + 1.5), sharey=True)
    for ax, key, title in ((axes[0], "cost", "$ per million output tokens"), (axes[1], "tpot", "TPOT p99")):
        for i, r in enumerate(rows):
            lo, hi = r[f"{key}_low"] * 100, r[f"{key}_high"] * 100
            ax.barh(i, hi - lo, left=lo, color="tab:blue" if key == "cost" else "tab:orange")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("change vs base (%)")
    axes[0].set_yticks(range(len(rows)), [r["parameter"] for r in rows])
    fig.suptitle("Sensitivity of the chosen configuration (each parameter -/+20 %, trace: bootstrap draws)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
