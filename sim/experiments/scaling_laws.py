"""Headline experiment: how the fastest achievable decode speed scales with model size and HBM bandwidth.

Epoch AI ("Inference economics of language models", Erdil 2025; physics.md §4) find that, at
the fastest serial decoding speed a cluster of GPUs can reach (optimising the number of GPUs,
the parallel split and the batch size), speed per request scales about as
``params^(-1/2)`` and ``HBM-bandwidth^(+1/3)``: per-token time ~ P/(N B) + L c sqrt(N), and
minimising over N gives time ~ (P/B)^(1/3) L^(2/3); with L ~ P^(1/3) for the model family this
becomes P^(5/9) ~ P^(1/2). More interconnect bandwidth barely helps, cutting per-message
latency helps a lot.

The study is analytic: every point is the maximum speed over the speed-cost frontier searched
by :func:`sim.tools.frontier.search` (GPU counts up to ``search.max_gpus``, every valid 1-D / 2-D
tensor x pipeline split, log-spaced batch sizes, zero cached context as in Epoch's headline
numbers) on the simulator's own step-time model. Three sweeps, each under two sets of
assumptions (``ASSUMPTIONS``):

* ``params`` -- the dense models ``DENSE_MODELS`` (1.2B to 406B) on the base H100;
* ``bandwidth`` -- Llama-3-70B with the base hardware's ``hbm_bandwidth_GBps`` multiplied by
  each of ``BANDWIDTH_FACTORS``;
* ``network`` -- Llama-3-70B with ``network.latency_scale`` / ``network.bandwidth_scale``
  what-ifs (the acceptance checks: 10x interconnect bandwidth changes the maximum speed by
  < 5 %, halving per-message latency raises it by > 25 %).

``epoch`` is ``assumptions=epoch`` (Epoch's H100: 1e15 FLOP/s, 3.3 TB/s, $2.10/h; 4 x 4 us
launches per layer; NCCL latency formula); ``measured`` is the default (datasheet H100,
the ``optimized`` engine profile, one-shot all-reduce inside a node).
:func:`run` writes every table as Parquet; ``notebooks/scaling_laws.ipynb`` plots them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.experiments import load_tables, save_tables
from sim.tools.frontier import gpu_counts, search

NAME = "scaling_laws"

ASSUMPTIONS: dict[str, list[str]] = {"epoch": ["assumptions=epoch"], "measured": []}
DENSE_MODELS = ("llama3_2_1b", "llama3_8b", "qwen2_5_14b", "llama3_70b", "llama3_405b")
QUICK_MODELS = ("llama3_8b", "qwen2_5_14b", "llama3_70b", "llama3_405b")
BANDWIDTH_MODEL = "llama3_70b"
#: multiples of the base hardware's HBM bandwidth (0.25x .. 4x, steps of sqrt 2)
BANDWIDTH_FACTORS = tuple(float(2.0 ** (k / 2.0)) for k in range(-4, 5))
QUICK_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: (network.latency_scale, network.bandwidth_scale) what-ifs on the bandwidth model
NETWORK_SCALES = ((1.0, 1.0), (0.25, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 0.1), (1.0, 10.0))
QUICK_NETWORK_SCALES = ((1.0, 1.0), (0.5, 1.0), (1.0, 10.0))
#: Epoch's published exponents
EPOCH_EXPONENTS = {"params": -0.5, "hbm_bandwidth": 1.0 / 3.0}

#: the frontier search: every optimum found lies at <= 64 GPUs and batch 1, inside these
#: bounds (``at_search_edge`` in the tables flags an optimum on the largest GPU count searched;
#: the quick search stops at 64 GPUs, where the 405B and 0.25x-bandwidth optima of the epoch
#: assumptions sit -- same maxima as the full search, but flagged)
SEARCH = {"max_gpus": 256, "batch_points": 100}
QUICK_SEARCH = {"max_gpus": 64, "batch_points": 12}

_POINT_COLUMNS = ("gpus", "tp", "pp", "tp_cols", "batch", "latency_s", "compute_s", "memory_s", "network_s",
                  "fixed_s", "usd_per_mtok")


def max_speed(overrides: Sequence[str], search_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fastest point of the speed-cost frontier of one configuration (Hydra-style overrides).

    Returns ``max_speed_tok_s`` (tokens/s seen by one request), the deployment reaching it
    (``gpus``, ``tp``, ``pp``, ``tp_cols``, ``batch``), its step time and four parts, its cost
    (``usd_per_mtok``), the cheapest cost anywhere on the frontier (``min_usd_per_mtok``), the
    model's parameter count, the HBM bandwidth, and ``at_search_edge`` (the optimum sits on the
    largest GPU count searched, so a larger search might go faster).
    """
    s = dict(search_cfg or SEARCH)
    cfg_map = compose_config(list(overrides))
    cfg = parse_config(cfg_map)
    table, headline = search(cfg_map, s)
    speed = table.column("speed_tok_s").to_numpy()
    i = int(np.argmax(speed))
    row = {k: table.column(k)[i].as_py() for k in _POINT_COLUMNS}
    largest = max(gpu_counts(s.get("max_gpus", 256), cfg.topology.gpus_per_node))
    return {
        "model": cfg.model.name, "params": float(cfg.model.params), "hardware": cfg.hardware.name,
        "engine": cfg.engine.name, "hbm_bandwidth_GBps": float(cfg.hardware.hbm_bandwidth_GBps),
        "latency_scale": float(cfg.network.latency_scale), "bandwidth_scale": float(cfg.network.bandwidth_scale),
        "max_speed_tok_s": float(headline["max_speed_tok_s"]),
        **{k: (int(v) if k in ("gpus", "tp", "pp", "tp_cols", "batch") else float(v)) for k, v in row.items()},
        "min_usd_per_mtok": float(headline["min_usd_per_mtok"]),
        "at_search_edge": bool(row["gpus"] >= largest),
    }


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def params_sweep(models: Iterable[str], base_overrides: Sequence[str] = (),
                 search_cfg: dict[str, Any] | None = None) -> pa.Table:
    """Maximum speed of each model (``model=NAME``) on the base hardware: one row per model."""
    return _table([max_speed([*base_overrides, f"model={m}"], search_cfg) for m in models])


def bandwidth_sweep(factors: Iterable[float], base_overrides: Sequence[str] = (),
                    search_cfg: dict[str, Any] | None = None) -> pa.Table:
    """Maximum speed with the base hardware's HBM bandwidth multiplied by each factor.

    The base bandwidth is read from the composed base configuration (``hardware=`` and
    ``assumptions=`` in ``base_overrides`` choose it); one row per factor, with ``factor``.
    """
    base = list(base_overrides)
    b0 = float(compose_config(base)["hardware"]["hbm_bandwidth_GBps"])
    rows = []
    for f in factors:
        r = max_speed([*base, f"hardware.hbm_bandwidth_GBps={b0 * float(f)!r}"], search_cfg)
        rows.append({"factor": float(f), **r})
    return _table(rows)


def network_sweep(scales: Iterable[tuple[float, float]], base_overrides: Sequence[str] = (),
                  search_cfg: dict[str, Any] | None = None) -> pa.Table:
    """Maximum speed under ``(network.latency_scale, network.bandwidth_scale)`` what-ifs.

    ``speed_ratio`` is each point's maximum speed over the unscaled point's (computed once).
    """
    base = list(base_overrides)
    ref = max_speed(base, search_cfg)["max_speed_tok_s"]
    rows = []
    for lat, bw in scales:
        r = max_speed([*base, f"network.latency_scale={float(lat)!r}", f"network.bandwidth_scale={float(bw)!r}"],
                      search_cfg)
        rows.append({**r, "speed_ratio": r["max_speed_tok_s"] / ref})
    return _table(rows)


def fit_exponent(x: Iterable[float], y: Iterable[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent k of y ~ x^k."""
    lx, ly = np.log(np.asarray(list(x), dtype=float)), np.log(np.asarray(list(y), dtype=float))
    if lx.size < 2 or np.ptp(lx) == 0:
        raise ValueError("fit_exponent needs at least two distinct x values")
    return float(np.polyfit(lx, ly, 1)[0])


def _with_column(table: pa.Table, name: str, value: Any) -> pa.Table:
    return table.add_column(0, name, pa.array([value] * table.num_rows))


def run(root: str | Path, quick: bool = False) -> dict[str, pa.Table]:
    """Run the three sweeps under both assumption sets; write ``root/scaling_laws_{name}.parquet``.

    Returns ``{"params", "bandwidth", "network", "exponents"}``: the first three one row per
    point (column ``assumptions`` = ``epoch`` | ``measured``), ``exponents`` one row per
    assumptions x law with the fitted exponent, Epoch's published one and the points fitted.
    ``quick`` uses fewer models, factors and network points and a coarser batch grid (the
    optimum is at batch 1 throughout, so the maxima do not change).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    s = QUICK_SEARCH if quick else SEARCH
    models = QUICK_MODELS if quick else DENSE_MODELS
    factors = QUICK_BANDWIDTH_FACTORS if quick else BANDWIDTH_FACTORS
    net = QUICK_NETWORK_SCALES if quick else NETWORK_SCALES
    parts: dict[str, list[pa.Table]] = {"params": [], "bandwidth": [], "network": []}
    exps = []
    for name, base in ASSUMPTIONS.items():
        p = _with_column(params_sweep(models, base, s), "assumptions", name)
        b = _with_column(bandwidth_sweep(factors, [*base, f"model={BANDWIDTH_MODEL}"], s), "assumptions", name)
        n = _with_column(network_sweep(net, [*base, f"model={BANDWIDTH_MODEL}"], s), "assumptions", name)
        parts["params"].append(p)
        parts["bandwidth"].append(b)
        parts["network"].append(n)
        for law, tab, x in (("params", p, "params"), ("hbm_bandwidth", b, "hbm_bandwidth_GBps")):
            exps.append({"assumptions": name, "law": law,
                         "exponent": fit_exponent(tab.column(x).to_pylist(), tab.column("max_speed_tok_s").to_pylist()),
                         "epoch_exponent": EPOCH_EXPONENTS[law], "points": tab.num_rows})
    out = {k: pa.concat_tables(v) for k, v in parts.items()}
    out["exponents"] = pa.Table.from_pylist(exps)
    return save_tables(out, root, NAME)


def load(root: str | Path) -> dict[str, pa.Table]:
    """The tables :func:`run` wrote under ``root``."""
    return load_tables(root, NAME, ("params", "bandwidth", "network", "exponents"))
