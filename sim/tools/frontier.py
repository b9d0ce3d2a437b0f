"""``python -m sim.frontier``: the speed-cost frontier of serving one model on one GPU type.

Searches GPU count (``search.max_gpus``; powers of two and multiples of the node size),
every valid parallel split (1-D or 2-D tensor x pipeline) and ``search.batch_points`` batch
sizes up to ``search.max_batch`` (log-spaced) at ``search.context_len`` cached tokens, with the
analytic model (:mod:`sim.cost.analytic`). Writes ``frontier.parquet`` into ``out`` (default: the
current directory) with every point that fits in memory — the configuration, latency, speed
per request, throughput and dollars per million output tokens, and whether it is on the
Pareto frontier — and prints one JSON line with the headline numbers.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.build import analytic_model
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.config.presets import check_group_choices
from sim.cost.analytic import pareto_mask, valid_splits
from sim.errors import ConfigError
from sim.observe.runtime import fewer_collections
from sim.tools.cli import fail, guarded, json_value, key_values

SEARCH_DEFAULTS = {"max_gpus": 256, "max_batch": 4096, "batch_points": 400, "context_len": 0}


def gpu_counts(max_gpus: int, per_node: int) -> list[int]:
    counts = {2 ** k for k in range(0, 20) if 2 ** k <= max_gpus}
    counts |= {per_node * k for k in range(1, max_gpus // per_node + 1)}
    return sorted(counts)


def search(cfg_map: dict[str, Any], search_cfg: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    cfg = parse_config(cfg_map)
    s: dict[str, Any] = {**SEARCH_DEFAULTS, **search_cfg}
    for k in ("max_gpus", "max_batch", "batch_points"):
        if not isinstance(s[k], int) or s[k] < 1:
            raise ConfigError(f"search.{k}={s[k]!r} must be an integer >= 1")
    if not isinstance(s["context_len"], (int, float)) or s["context_len"] < 0:
        raise ConfigError(f"search.context_len={s['context_len']!r} must be a number >= 0")
    batches = np.unique(np.round(np.geomspace(1, s["max_batch"], s["batch_points"])))
    counts = gpu_counts(s["max_gpus"], cfg.topology.gpus_per_node)
    model = analytic_model(cfg, max_gpus=max(counts))
    values = ("batch", "latency_s", "speed_tok_s", "throughput_tok_s", "usd_per_mtok", "gamma", "tokens_per_pass",
              "compute_s", "memory_s", "network_s", "fixed_s")
    cols: dict[str, list] = {k: [] for k in ("gpus", "tp", "pp", "tp_cols", *values)}
    for n in counts:
        for split in valid_splits(cfg, n):
            r = model.decode(split, batches, s["context_len"])
            ok = r["fits"]
            if not ok.any():
                continue
            count = int(ok.sum())
            cols["gpus"].append(np.full(count, split.gpus + cfg.speculative.extra_gpus))
            cols["tp"].append(np.full(count, split.tp))
            cols["pp"].append(np.full(count, split.pp))
            cols["tp_cols"].append(np.full(count, split.tp_cols))
            for name in values:
                cols[name].append(r[name][ok])
    if not cols["gpus"]:
        raise ConfigError(f"model {cfg.model.name} fits on no deployment up to search.max_gpus={s['max_gpus']} "
                          f"{cfg.hardware.name} GPUs")
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["pareto"] = pareto_mask(data["speed_tok_s"], data["usd_per_mtok"])
    table = pa.table(data)
    i = int(np.argmax(data["speed_tok_s"]))
    headline = {
        "model": cfg.model.name, "hardware": cfg.hardware.name, "engine": cfg.engine.name,
        "context_len": s["context_len"], "points": table.num_rows,
        "max_speed_tok_s": float(data["speed_tok_s"][i]), "gpus_at_max": int(data["gpus"][i]),
        "tp_at_max": int(data["tp"][i]), "pp_at_max": int(data["pp"][i]), "tp_cols_at_max": int(data["tp_cols"][i]),
        "batch_at_max": int(data["batch"][i]), "usd_per_mtok_at_max": float(data["usd_per_mtok"][i]),
        "gamma_at_max": int(data["gamma"][i]), "speculative": cfg.speculative.method,
        "min_usd_per_mtok": float(data["usd_per_mtok"].min()),
    }
    return table, headline


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    search_cfg: dict[str, Any] = {}
    out = Path(".")
    overrides = []
    for key, value in key_values(argv):
        if key.startswith("search."):
            name = key[7:]
            if name not in SEARCH_DEFAULTS:
                fail(f"search has no field {name!r}; allowed: {sorted(SEARCH_DEFAULTS)}")
            search_cfg[name] = json_value(value)
        elif key == "out":
            out = Path(value)
        else:
            overrides.append(f"{key}={value}")
    check_group_choices(overrides)
    t0 = time.perf_counter()
    with fewer_collections():   # the search allocates many small route and cost objects
        table, headline = search(compose_config(overrides), search_cfg)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "frontier.parquet")
    headline["wall_s"] = time.perf_counter() - t0
    headline["path"] = str(out / "frontier.parquet")
    print(json.dumps(headline))
    return headline
