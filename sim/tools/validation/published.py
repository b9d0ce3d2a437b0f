"""Predicted vs published: the rows of ``published_rows.yaml`` evaluated with the simulator.

Each row names a published measurement (its source, trust tier and value), the simulator
config that expresses it (hardware, model, engine profile, parallelism, precision as
overrides of ``conf/config.yaml``) and what to predict. Every prediction goes through the
simulator's own cost models (the step predictor, the fabric's collective model, the
speculative decoder) or, for serving under load, a discrete-event run. Only the serving-engine
profiles' overheads are fitted, on the rows marked ``role: fit``
(:mod:`sim.tools.validation.engine_overheads`); each row names its ``origin`` (the source it
comes from: what leave-one-source-out holds out).

Prediction kinds and their modelling assumptions:

* ``decode_ms``: one decode step of ``size`` sequences at ``context_len`` cached tokens.
* ``ttft_ms``: one prefill step of ``prompt_len`` tokens at batch 1 (no queueing), plus the
  engine's per-request front-end time (``engine.request_overhead_us``).
* ``itl_ms``: ``concurrency`` requests of ``isl``/``osl`` tokens served back to back
  (closed loop). In steady state every step decodes one token of each request at the mean
  context ``isl + osl/2`` and, on average, runs ``(concurrency - 1) isl / osl`` prompt
  tokens of the other requests (chunked prefill mixed into decode steps); ITL is that step's
  time. At concurrency 1 no other prompt interleaves.
* ``offline_tok_s``: an offline (infinite request rate) run on ``gpus`` GPUs as
  ``gpus / (tp pp)`` replicas; each replica keeps as many sequences in flight as its KV cache
  holds at their full length ``isl + osl`` (capped by ``max_batch``), each step mixing their
  decodes with the prompt tokens that replace finished requests, as for ``itl_ms``.
  Output tokens per second over all replicas.
* ``server``: a discrete-event run of ``requests`` Poisson arrivals at ``rate_per_s`` with
  prompts of ``isl`` tokens and outputs of ``osl`` (a number or a length distribution); the
  row's ``metric`` (e.g. ``ttft_s.mean``) over the requests after the first
  ``warmup_requests`` (steady state).
* ``allreduce_us``: one all-reduce of ``bytes`` per rank over the first ``ranks`` GPUs of
  the topology, with the engine profile's collective algorithm and software latency.
* a row whose ``params.isl`` is ``{fit_to: ROW}`` takes the prompt length (an unpublished
  workload property) that makes row ``ROW`` (an ``offline_tok_s`` row) match its measurement;
  ``ROW`` itself is then not a prediction (its error is zero by construction).
* ``spec_speedup``: time per generated token without over with speculation at batch 1,
  with the per-token acceptance solved so that the expected tokens per verification pass
  equal the published mean accepted tokens ``tau`` at ``gamma`` proposed tokens (tree levels;
  ``tree_tokens``, when given, the tokens the method's draft tree verifies per pass).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sim.build import StepModel, build_step_model, make_fabric
from sim.config.compose import compose_config, override_value
from sim.config.parse import parse_config
from sim.cost.analytic import steady_step_s
from sim.cost.placement import placement
from sim.errors import ConfigError
from sim.policy.speculative import expected_tokens
from sim.spec.batch import BatchShape
from sim.tools.steptime import predict as steptime_predict

ROWS_FILE = Path(__file__).with_name("published_rows.yaml")
COLUMNS = ("id", "group", "origin", "role", "kind", "metric", "unit", "engine", "config", "assumption", "source",
           "tier", "measured", "predicted", "error", "held_out_predicted", "held_out_error")


def load_rows(path: Path = ROWS_FILE) -> list[dict[str, Any]]:
    rows = yaml.safe_load(path.read_text())
    if not isinstance(rows, list):
        raise ConfigError(f"{path.name}: expected a list of rows")
    for i, r in enumerate(rows):
        for key in ("id", "group", "kind", "source", "tier", "measured", "config", "origin"):
            if key not in r:
                raise ConfigError(f"{path.name} row {i} ({r.get('id', '?')}): missing field {key!r}")
        if r["kind"] not in PREDICTORS:
            raise ConfigError(f"{path.name} row {r['id']}: kind={r['kind']!r} is not one of {sorted(PREDICTORS)}")
    return rows


class Evaluator:
    """Evaluates rows, caching composed configs, built step models and discrete-event runs.

    ``engine_values`` (engine preset name -> {field: value}) replaces fields of those engine
    profiles (what a fit tries); ``maps`` shares composed configs between evaluators."""

    def __init__(self, engine_values: dict[str, dict[str, float]] | None = None,
                 maps: dict[tuple[str, ...], dict[str, Any]] | None = None) -> None:
        self._maps: dict[tuple[str, ...], dict[str, Any]] = {} if maps is None else maps
        self._engine_values = engine_values or {}
        self._models: dict[tuple[str, ...], StepModel] = {}
        self._runs: dict[tuple, dict[str, Any]] = {}
        self._isl: dict[str, float] = {}

    def config(self, overrides: list[str]) -> dict[str, Any]:
        key = tuple(overrides)
        if key not in self._maps:
            self._maps[key] = compose_config(list(overrides))
        values = self._engine_values.get(self._maps[key]["engine"]["name"])
        if not values:
            return self._maps[key]
        return {**self._maps[key], "engine": {**self._maps[key]["engine"], **values}}

    def model(self, overrides: list[str]) -> StepModel:
        key = tuple(overrides)
        if key not in self._models:
            self._models[key] = build_step_model(self.config(overrides))
        return self._models[key]

    def predict(self, row: dict[str, Any], rows_by_id: dict[str, dict[str, Any]] | None = None) -> float:
        params = dict(row.get("params", {}))
        if isinstance(params.get("isl"), dict):
            ref = (rows_by_id or {}).get(params["isl"].get("fit_to"))
            if ref is None or ref["kind"] != "offline_tok_s":
                raise ConfigError(f"row {row['id']}: isl.fit_to must name an offline_tok_s row")
            params["isl"] = self.fitted_isl(ref)
        return PREDICTORS[row["kind"]](self, row["config"], params, row)

    def fitted_isl(self, ref: dict[str, Any]) -> float:
        """Prompt length at which ``ref``'s predicted throughput equals its measurement."""
        if ref["id"] not in self._isl:
            def gap(isl: float) -> float:
                return _offline_tok_s(self, ref["config"], {**ref["params"], "isl": isl}, ref) - float(ref["measured"])
            lo, hi = 1.0, 32768.0
            if gap(lo) < 0 or gap(hi) > 0:
                raise ConfigError(f"row {ref['id']}: no prompt length in [1, 32768] reproduces {ref['measured']}")
            for _ in range(40):
                mid = (lo * hi) ** 0.5
                lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
            self._isl[ref["id"]] = (lo * hi) ** 0.5
        return self._isl[ref["id"]]


def _decode_ms(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    m = ev.model(cfg)
    return m.predictor.step(BatchShape.decode(int(p.get("size", 1)), int(p["context_len"]))).total_s * 1e3


def _ttft_ms(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    m = ev.model(cfg)
    # one prefill step, plus the engine's per-request front-end time (HTTP, tokenisation)
    return (m.predictor.step(BatchShape.prefill(int(p["prompt_len"]))).total_s
            + m.cfg.engine.request_overhead_us * 1e-6) * 1e3


def _itl_ms(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    c, isl, osl = int(p["concurrency"]), float(p["isl"]), float(p["osl"])
    return steady_step_s(ev.model(cfg), c, isl, osl, (c - 1) * isl / osl) * 1e3


def _offline_tok_s(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    m = ev.model(cfg)
    isl, osl = float(p["isl"]), float(p["osl"])
    replicas = int(p["gpus"]) // (m.cfg.parallel.tp * m.cfg.parallel.pp)
    if replicas < 1:
        raise ConfigError(f"row {row['id']}: gpus={p['gpus']} is fewer than tp*pp")
    most = min(int(m.capacity.tokens // (isl + osl)), int(p.get("max_batch", 4096)))
    if most < 1:
        raise ConfigError(f"row {row['id']}: the KV cache holds no sequence of {isl + osl:.0f} tokens")
    best = 0.0
    for b in np.unique(np.geomspace(1, most, 40).astype(int)):
        best = max(best, b / steady_step_s(m, int(b), isl, osl, b * isl / osl))
    return best * replicas


#: what a ``server`` row's ``metric`` may name (``<latency>.<mean|p50|p90|p99>``)
SERVER_LATENCIES = ("ttft_s", "tpot_s", "e2e_s")


def _server_run(ev: Evaluator, cfg: list[str], p: dict) -> dict[str, Any]:
    """Latency statistics of a discrete-event run of Poisson arrivals at ``p['rate_per_s']``
    (remembered): ``ttft_s`` / ``tpot_s`` / ``e2e_s`` -> mean, p50, p90, p99 over the requests
    that arrive after the first ``p['warmup_requests']`` (0: all), i.e. in steady state, as a
    benchmark that runs for 40 minutes measures it. Every one of those must complete (a
    rejected or unfinished request would otherwise drop out of the statistics unseen).
    ``p['osl']``: the output length, an integer or a length spec (``workloads/lengths.py``)."""
    from sim.app import run
    from sim.observe.metrics import percentiles

    requests, warmup, osl = p["requests"], p.get("warmup_requests", 0), p["osl"]
    if (isinstance(warmup, bool) or not isinstance(warmup, int) or isinstance(requests, bool)
            or not isinstance(requests, int) or not 0 <= warmup < requests):
        raise ConfigError(f"params.warmup_requests={warmup!r} must be an integer from 0 to requests - 1 "
                          f"(requests={requests!r})")
    keep = ("rate_per_s", "isl", "osl", "requests", "seed", "warmup_requests")
    key = (tuple(cfg), tuple((k, repr(p[k])) for k in keep if k in p))
    if key not in ev._runs:
        overrides = list(cfg) + [
            "workload=synthetic", f"workload.rate_per_s={p['rate_per_s']}", "workload.arrival=poisson",
            f"workload.prompt_tokens={int(p['isl'])}",
            f"workload.output_tokens={override_value(osl if isinstance(osl, dict) else int(osl))}",
            f"workload.max_requests={requests}", f"seed={int(p.get('seed', 0))}",
            "output.progress=never", "output.write_parquet=true"]
        with tempfile.TemporaryDirectory() as tmp:
            summary = run(ev.config(overrides), tmp)
            table = pq.read_table(Path(tmp) / "requests.parquet",
                                  columns=["arrival_s", "status", *SERVER_LATENCIES])
        order = np.argsort(table.column("arrival_s").to_numpy(), kind="stable")[warmup:]
        status = table.column("status").to_numpy(zero_copy_only=False)[order]
        if not summary.get("complete", True) or (status != "completed").any():
            raise ConfigError(f"server run {' '.join(cfg)}: {int((status != 'completed').sum())} of the "
                              f"{len(order)} requests after the warm-up did not complete; the latencies would "
                              "leave them out")
        ev._runs[key] = {name: percentiles(table.column(name).to_numpy()[order]) for name in SERVER_LATENCIES}
    return ev._runs[key]


def _server(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    group, _, stat = str(row.get("metric")).partition(".")
    if group not in SERVER_LATENCIES or stat not in ("mean", "p50", "p90", "p99"):
        raise ConfigError(f"row {row['id']}: metric={row.get('metric')!r} must be one of "
                          f"{list(SERVER_LATENCIES)} followed by .mean, .p50, .p90 or .p99")
    value = _server_run(ev, cfg, p)[group][stat]
    if value is None:
        raise ConfigError(f"row {row['id']}: no request after the warm-up has a {group}")
    return float(value)


def _allreduce_us(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    rc = parse_config(ev.config(list(cfg)))
    fabric = make_fabric(rc)
    ranks = placement(rc, list(fabric.gpus))[0][0][: int(p["ranks"])]
    return float(fabric.group(ranks).allreduce_s(float(p["bytes"]))) * 1e6


def acceptance_for(tau: float, gamma: int) -> float:
    """Per-token acceptance ``a`` with ``(1 - a^(gamma+1)) / (1 - a) = tau`` (bisection)."""
    if not 1.0 <= tau <= gamma + 1:
        raise ConfigError(f"tau={tau} must be in [1, gamma+1={gamma + 1}]")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, gamma) < tau else (lo, mid)
    return (lo + hi) / 2


def _spec_speedup(ev: Evaluator, cfg: list[str], p: dict, row: dict) -> float:
    gamma = int(p["gamma"])
    a = acceptance_for(float(p["tau"]), gamma)
    batch = [{"size": 1, "context_len": int(p.get("context_len", 512))}]
    base = steptime_predict(ev.config([c for c in cfg if not c.startswith("speculative")]), batch)[0]
    tree = [f"speculative.tree_tokens={int(p['tree_tokens'])}"] if p.get("tree_tokens") else []
    spec = steptime_predict(ev.config(list(cfg) + [f"speculative.acceptance={a}",
                                                   f"speculative.num_tokens={gamma}", *tree]), batch)[0]
    return base["time_per_token_s"] / spec["time_per_token_s"]


PREDICTORS: dict[str, Callable[[Evaluator, list[str], dict, dict], float]] = {
    "decode_ms": _decode_ms, "ttft_ms": _ttft_ms, "itl_ms": _itl_ms, "offline_tok_s": _offline_tok_s,
    "server": _server, "allreduce_us": _allreduce_us, "spec_speedup": _spec_speedup,
}
UNITS = {"decode_ms": "ms", "ttft_ms": "ms", "itl_ms": "ms", "offline_tok_s": "tok/s", "server": "s",
         "allreduce_us": "us", "spec_speedup": "x"}


def engine_of(cfg: list[str]) -> str:
    return next((c.split("=", 1)[1] for c in cfg if c.startswith("engine=")), "optimized")


def published_table(rows: list[dict[str, Any]] | None = None, groups: set[str] | None = None,
                    evaluator: Evaluator | None = None) -> pa.Table:
    """One row per published number: config, measured, predicted, relative error; for a row
    the serving-engine fit used (``role: fit``), also its prediction by the fit that left its
    source out (``held_out_*``; a predicted row's are its own)."""
    from sim.tools.validation.engine_overheads import leave_one_source_out

    rows = load_rows() if rows is None else rows
    ev = evaluator or Evaluator()
    by_id = {r["id"]: r for r in rows}
    wanted = [r for r in rows if not groups or r["group"] in groups]
    held = leave_one_source_out(rows, ev._maps) if any(r.get("role") == "fit" for r in wanted) else {}
    out: dict[str, list] = {k: [] for k in COLUMNS}
    for r in wanted:
        pred = ev.predict(r, by_id)
        measured = float(r["measured"])
        alone = held.get(r["id"], pred)
        values = {"id": r["id"], "group": r["group"], "origin": r["origin"], "role": r.get("role", "predicted"),
                  "kind": r["kind"], "metric": r.get("metric", r["kind"]),
                  "unit": UNITS[r["kind"]], "engine": engine_of(r["config"]), "config": " ".join(r["config"]),
                  "assumption": r.get("assumption", ""), "source": r["source"], "tier": r["tier"],
                  "measured": measured, "predicted": pred, "error": pred / measured - 1.0,
                  "held_out_predicted": alone, "held_out_error": alone / measured - 1.0}
        for k in COLUMNS:
            out[k].append(values[k])
    return pa.table(out)


def group_summary(table: pa.Table) -> dict[str, dict[str, Any]]:
    """Median and worst absolute error per group and over all published rows; over the rows
    the serving-engine fit used (in sample), over those it did not (predicted), and over
    every row with each fitted row predicted by the fit that left its source out
    (``held_out_median_abs_error``)."""
    d = table.to_pydict()
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for g, e, h, role in zip(d["group"], d["error"], d["held_out_error"], d["role"]):
        for key in (g, "all"):
            groups.setdefault(key, []).append((abs(e), abs(h), role))

    def median(v: list[float]) -> float | None:
        return float(np.median(v)) if v else None

    return {g: {"rows": len(v), "median_abs_error": float(np.median([e for e, _, _ in v])),
                "worst_abs_error": float(np.max([e for e, _, _ in v])),
                "fitted_rows": sum(role != "predicted" for _, _, role in v),
                "fitted_median_abs_error": median([e for e, _, role in v if role != "predicted"]),
                "predicted_median_abs_error": median([e for e, _, role in v if role == "predicted"]),
                "held_out_median_abs_error": median([h for _, h, _ in v])}
            for g, v in groups.items()}


def markdown(table: pa.Table, summary: dict[str, dict[str, float]]) -> str:
    d = table.to_pydict()
    lines = ["# Validation against published numbers", "",
             "Rows: `sim/tools/validation/published_rows.yaml` (sources in `shared/reference/published_numbers.md` beside the repository).", "",
             "Rows marked `fit` fitted the serving-engine profiles' overheads "
             "(`sim/tools/validation/engine_overheads.py`), the `fit_workload` row the MLPerf prompt length; "
             "every other row is a prediction. *Held out*: each `fit` row predicted instead by the fit that "
             "left its source out.", "",
             "| group | rows | median abs error | worst abs error | fitted rows (median, in sample) | "
             "predicted rows median | held-out median |", "|---|---|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    for g, s in summary.items():
        lines.append(f"| {g} | {s['rows']} | {s['median_abs_error']:.1%} | {s['worst_abs_error']:.1%} | "
                     f"{s['fitted_rows']} ({pct(s['fitted_median_abs_error'])}) | "
                     f"{pct(s['predicted_median_abs_error'])} | {pct(s['held_out_median_abs_error'])} |")
    lines += ["", "| row | role | metric | engine | config | measured | predicted | error | held-out error | source (tier) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for i in range(table.num_rows):
        lines.append(f"| {d['id'][i]} | {d['role'][i]} | {d['metric'][i]} ({d['unit'][i]}) | {d['engine'][i]} | "
                     f"`{d['config'][i]}` | {d['measured'][i]:.4g} | {d['predicted'][i]:.4g} | {d['error'][i]:+.1%} | "
                     f"{d['held_out_error'][i]:+.1%} | {d['source'][i]} ({d['tier'][i]}) |")
    notes = sorted({a for a in d["assumption"] if a})
    if notes:
        lines += ["", "Assumptions:", ""] + [f"- {a}" for a in notes]
    return "\n".join(lines) + "\n"

