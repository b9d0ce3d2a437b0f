"""Headline experiment: tensor vs pipeline vs data parallelism on the same 8 H100s.

physics.md §4: data parallelism (DP, independent replicas behind a router) changes neither
the per-request speed nor the cost per token of a replica -- it only multiplies throughput --
so it is the default way to use more GPUs unless memory binds. Tensor parallelism (TP) splits
every layer, so each token streams 1/tp of the weights (faster per request) but pays two
all-reduces per layer (more cost per token). Pipeline parallelism (PP) splits the layers into
stages: one send per stage boundary (little communication, so more throughput per GPU than TP)
but every token still crosses every stage (no faster per request, plus stage overheads); it
pays where one GPU cannot hold the model.

Every layout ``tp x pp x dp = 8`` (one HGX node) of three cases (``CASES``):

* ``llama3_8b`` -- Llama-3-8B bf16 fits one GPU, so every layout is possible;
* ``llama3_70b`` -- Llama-3-70B bf16 (141 GB of weights): memory binds, a replica needs at
  least 4 GPUs (TP2 / PP2 hold 70.6 GB per GPU, above the 70 GB usable), so DP8 is impossible;
* ``llama3_70b_fp8`` -- the same model with fp8 weights (71 GB): 2-GPU replicas fit.

Each layout is a discrete-event simulation of the bundled Azure 2023 code trace
(:func:`sim.experiments.run_points`, every point starting from
``conf/experiment/parallelism.yaml``) in three regimes (``REGIMES``):

* ``light`` -- the trace's arrivals stretched 20x (``rate_scale=0.05``), so requests rarely
  share a step: ``1 / TPOT p50`` is a replica's decode speed for one request (with its ~2k-token
  context), the per-request speed of the layout;
* ``recorded`` -- the recorded arrival rate, bursts included (hundreds of requests within a
  minute): TPOT and TTFT as served, where other requests' prefill chunks share the decode steps;
* ``saturated`` -- the trace replayed 200x faster, so a queue builds and every replica runs
  full batches: steady-state throughput (:func:`steady_throughput`, leaving out the ramp and
  the drain of a finite replay) and cost per million output tokens with all 8 GPUs rented at
  that throughput; the simulator's ``busy`` (GPU-hours while a stage works; physics.md §5) and
  ``wall`` (all GPUs for the whole makespan, pipeline bubbles and the drain included) costs of
  the same run are kept alongside.

Note the trace is prompt-heavy (mean 2,048 prompt tokens, median 13 output tokens), so
throughput and cost per output token are dominated by prefill.

:func:`dp_scaling` checks the data-parallel claim directly: 1, 2, 4, 8 single-GPU replicas of
Llama-3-8B, each fed the same load per replica, keep the per-request speed and the cost per
token and multiply the throughput.

Besides the simulation, :func:`analytic` gives the closed-form steady-decode view
(:class:`sim.cost.analytic.AnalyticModel`): per-request speed against throughput per GPU over batch
sizes for each layout's replica split, which is independent of ``dp``.
:func:`run` writes the tables as Parquet; ``notebooks/parallelism.ipynb`` plots them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.build import analytic_model
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.cost.analytic import Split
from sim.experiments import load_tables, run_points, save_tables

NAME = "parallelism"
BASE = [f"+experiment={NAME}"]
GPUS = 8

#: (tp, pp, dp) layouts of the 8 GPUs, in plot order
LAYOUTS_8B = ((1, 1, 8), (2, 1, 4), (4, 1, 2), (8, 1, 1), (1, 2, 4), (1, 4, 2), (1, 8, 1), (2, 4, 1), (4, 2, 1))
LAYOUTS_70B = ((1, 1, 8), (2, 1, 4), (1, 2, 4), (4, 1, 2), (1, 4, 2), (8, 1, 1), (1, 8, 1), (2, 4, 1), (4, 2, 1))
LAYOUTS_70B_FP8 = ((1, 1, 8), (2, 1, 4), (4, 1, 2), (8, 1, 1), (1, 2, 4), (2, 4, 1), (4, 2, 1))

CASES: dict[str, dict[str, Any]] = {
    "llama3_8b": {"label": "Llama-3-8B bf16", "overrides": ["model=llama3_8b"], "layouts": LAYOUTS_8B},
    "llama3_70b": {"label": "Llama-3-70B bf16", "overrides": ["model=llama3_70b"], "layouts": LAYOUTS_70B},
    "llama3_70b_fp8": {"label": "Llama-3-70B fp8 weights", "overrides": ["model=llama3_70b", "precision.weights=fp8"],
                       "layouts": LAYOUTS_70B_FP8},
}
#: quick settings keep the layouts the tests and the notebook's story need
QUICK_LAYOUTS = {
    "llama3_8b": ((1, 1, 8), (2, 1, 4), (8, 1, 1), (1, 8, 1), (2, 4, 1)),
    "llama3_70b": ((1, 1, 8), (2, 1, 4), (4, 1, 2), (8, 1, 1), (2, 4, 1), (4, 2, 1)),
    "llama3_70b_fp8": ((1, 1, 8), (2, 1, 4), (8, 1, 1)),
}

REGIMES: dict[str, dict[str, Any]] = {
    "light": {"workload.rate_scale": 0.05},
    "recorded": {"workload.rate_scale": 1.0},
    "saturated": {"workload.rate_scale": 200.0},
}
#: requests replayed per regime (the first N of the trace)
MAX_REQUESTS = {"light": 500, "recorded": 1500, "saturated": 8000}
QUICK_MAX_REQUESTS = {"light": 60, "recorded": 150, "saturated": 600}

#: analytic view: cached context per sequence (the trace's mean prompt) and batch sizes per micro-batch
CONTEXT_LEN = 2048
BATCHES = np.unique(np.round(np.geomspace(1, 256, 33)))

#: columns kept from the sweep table (``sim.sweep.collect``); missing ones (error rows) are null
DES_COLUMNS = ("requests_total", "requests_completed", "requests_rejected", "requests_preemptions",
               "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s",
               "throughput_output_tokens_per_s", "throughput_makespan_s", "cost_gpus", "cost_usd_per_hour",
               "cost_busy_gpu_hours",
               "cost_usd_per_million_output_tokens", "cost_usd_per_million_output_tokens_busy",
               "memory_weights_GB_per_gpu", "memory_kv_GB_per_gpu", "memory_kv_capacity_tokens_per_replica",
               "time_breakdown_network_s", "time_breakdown_total_s", "sim_wall_s")


def layout_label(tp: int, pp: int, dp: int) -> str:
    """``TP2xPP4``-style name; factors of 1 are left out (``DP8``, ``TP8``)."""
    parts = [f"{k}{v}" for k, v in (("TP", tp), ("PP", pp), ("DP", dp)) if v > 1]
    return "x".join(parts) or "1 GPU"


def layout_points(layouts: Iterable[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Hydra overrides of each layout (``parallel.tp``, ``parallel.pp``, ``parallel.dp``)."""
    return [{"parallel.tp": tp, "parallel.pp": pp, "parallel.dp": dp} for tp, pp, dp in layouts]


def steady_throughput(run_dir: str | Path) -> float | None:
    """Output tokens per second while every replica of a run has requests waiting (saturated).

    The window runs from the first moment every replica has a non-empty queue to the last
    moment every replica still has one (from ``steps.parquet``'s ``waiting``), so it leaves out
    the ramp and the drain of a finite replay (the last requests finishing in ever smaller
    batches, data-parallel replicas running out of work at different times), which the
    makespan throughput charges. Tokens of each completed request count from
    ``requests.parquet``: its first token at ``first_token_s``, the others spread evenly up to
    ``finish_s``. None when the run never saturates every replica.
    """
    run_dir = Path(run_dir)
    st = pq.read_table(run_dir / "steps.parquet", columns=["replica", "start_s", "waiting"]).to_pydict()
    queued: dict[int, list[float]] = {}
    for rep, t, w in zip(st["replica"], st["start_s"], st["waiting"]):
        queued.setdefault(rep, [])
        if w > 0:
            queued[rep].append(t)
    if not queued or not all(queued.values()):
        return None
    lo = max(min(v) for v in queued.values())
    hi = min(max(v) for v in queued.values())
    if hi <= lo:
        return None
    rq = pq.read_table(run_dir / "requests.parquet",
                       columns=["status", "first_token_s", "finish_s", "output_tokens"]).to_pydict()
    tokens = 0.0
    for status, first, finish, n in zip(rq["status"], rq["first_token_s"], rq["finish_s"], rq["output_tokens"]):
        if status != "completed":
            continue
        tokens += 1.0 if lo <= first < hi else 0.0
        if n > 1 and finish > first:
            tokens += (n - 1) * max(0.0, min(hi, finish) - max(lo, first)) / (finish - first)
    return tokens / (hi - lo)


def simulate(case: str, regime: str, layouts: Sequence[tuple[int, int, int]], max_requests: int,
             root: str | Path) -> pa.Table:
    """One discrete-event simulation per layout of ``case`` in ``regime``; one tidy row per layout.

    Columns: ``case``, ``regime``, ``layout``, ``tp``, ``pp``, ``dp``, ``gpus``, the metrics in
    ``DES_COLUMNS``, ``throughput_steady_tok_s`` (:func:`steady_throughput`, saturated regime
    only) and ``error`` (the simulator's one-line reason for an impossible layout).
    """
    c = CASES[case]
    base = [*BASE, *c["overrides"], f"workload.max_requests={int(max_requests)}",
            *(f"{k}={v}" for k, v in REGIMES[regime].items())]
    out = Path(root) / case / regime
    table = run_points(base, layout_points(layouts), out).to_pylist()
    rows = []
    for i, ((tp, pp, dp), r) in enumerate(zip(layouts, table)):
        assert (r["parallel.tp"], r["parallel.pp"], r["parallel.dp"]) == (tp, pp, dp)
        job = out / str(i)
        steady = (steady_throughput(job) if regime == "saturated" and r.get("error") is None
                  and (job / "steps.parquet").is_file() else None)
        rows.append({"case": case, "regime": regime, "layout": layout_label(tp, pp, dp), "tp": tp, "pp": pp, "dp": dp,
                     "gpus": tp * pp * dp, **{k: r.get(k) for k in DES_COLUMNS}, "throughput_steady_tok_s": steady,
                     "error": r.get("error")})
    return pa.Table.from_pylist(rows, schema=_des_schema())


def _des_schema() -> pa.Schema:
    ints = {"tp", "pp", "dp", "gpus", "requests_total", "requests_completed", "requests_rejected",
            "requests_preemptions", "cost_gpus", "memory_kv_capacity_tokens_per_replica"}
    fields = [pa.field(k, pa.string()) for k in ("case", "regime", "layout")]
    fields += [pa.field(k, pa.int64()) for k in ("tp", "pp", "dp", "gpus")]
    fields += [pa.field(k, pa.int64() if k in ints else pa.float64()) for k in DES_COLUMNS]
    fields += [pa.field("throughput_steady_tok_s", pa.float64())]
    return pa.schema(fields + [pa.field("error", pa.string())])


def summarize(des: pa.Table) -> pa.Table:
    """One row per case x layout: speed (light and recorded regimes), throughput and cost (saturated).

    ``speed_tok_s`` = 1 / TPOT p50 in the light regime (the layout's per-request decode speed);
    ``speed_recorded_tok_s`` and ``ttft_p50_recorded_s`` at the recorded rate; at saturation
    ``throughput_tok_s`` (steady state, :func:`steady_throughput`) and per GPU,
    ``throughput_makespan_tok_s`` (output tokens / makespan), ``usd_per_mtok`` (all the layout's
    GPUs rented at the steady throughput), ``usd_per_mtok_busy`` (GPU-hours while a stage works)
    and ``usd_per_mtok_wall`` (all GPUs for the makespan); ``error`` for an impossible layout.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in des.to_pylist():
        key = (r["case"], r["layout"])
        out = rows.setdefault(key, {"case": r["case"], "layout": r["layout"], "tp": r["tp"], "pp": r["pp"],
                                    "dp": r["dp"], "gpus": r["gpus"], "error": r["error"]})
        out["error"] = out["error"] or r["error"]
        ok = r["error"] is None
        inv = (lambda v: 1.0 / v if ok and v else None)
        if r["regime"] == "light":
            out["speed_tok_s"] = inv(r["tpot_p50_s"])
            out["ttft_p50_light_s"] = r["ttft_p50_s"]
            out["kv_capacity_tokens_per_replica"] = r["memory_kv_capacity_tokens_per_replica"]
            out["weights_GB_per_gpu"] = r["memory_weights_GB_per_gpu"]
        elif r["regime"] == "recorded":
            out["speed_recorded_tok_s"] = inv(r["tpot_p50_s"])
            out["ttft_p50_recorded_s"] = r["ttft_p50_s"]
            out["ttft_p99_recorded_s"] = r["ttft_p99_s"]
        else:
            tput = r["throughput_steady_tok_s"]
            out["throughput_tok_s"] = tput
            out["throughput_per_gpu_tok_s"] = tput / r["gpus"] if ok and tput else None
            out["throughput_makespan_tok_s"] = r["throughput_output_tokens_per_s"]
            out["speed_saturated_tok_s"] = inv(r["tpot_p50_s"])
            out["usd_per_mtok"] = r["cost_usd_per_hour"] / 3600.0 / tput * 1e6 if ok and tput else None
            out["usd_per_mtok_busy"] = r["cost_usd_per_million_output_tokens_busy"]
            out["usd_per_mtok_wall"] = r["cost_usd_per_million_output_tokens"]
    cols = ("case", "layout", "tp", "pp", "dp", "gpus", "speed_tok_s", "ttft_p50_light_s", "speed_recorded_tok_s",
            "ttft_p50_recorded_s", "ttft_p99_recorded_s", "throughput_tok_s", "throughput_per_gpu_tok_s",
            "throughput_makespan_tok_s", "speed_saturated_tok_s", "usd_per_mtok", "usd_per_mtok_busy",
            "usd_per_mtok_wall", "kv_capacity_tokens_per_replica", "weights_GB_per_gpu", "error")
    return pa.Table.from_pylist([{k: v.get(k) for k in cols} for v in rows.values()])


def dp_scaling(root: str | Path, dps: Sequence[int] = (1, 2, 4, 8), quick: bool = False) -> pa.Table:
    """Llama-3-8B on ``dp`` single-GPU replicas, the same requests, the same arrival rate per replica.

    For each regime but ``recorded`` (``light`` and ``saturated``) the regime's requests are
    replayed at ``rate_scale x dp / 8``, so every replica sees the arrival rate a replica of DP8
    sees. Data parallelism should leave speed per request and cost per token unchanged and
    multiply throughput by ``dp``. One row per regime x dp: ``DES_COLUMNS``,
    ``throughput_steady_tok_s`` and ``throughput_per_gpu_tok_s`` (steady, per GPU).
    """
    n_req = QUICK_MAX_REQUESTS if quick else MAX_REQUESTS
    rows = []
    for regime in ("light", "saturated"):
        for dp in dps:
            rate = REGIMES[regime]["workload.rate_scale"] * dp / GPUS
            base = [*BASE, "model=llama3_8b", f"workload.max_requests={n_req[regime]}", f"workload.rate_scale={rate!r}"]
            out = Path(root) / "dp_scaling" / regime / str(dp)
            t = run_points(base, layout_points([(1, 1, dp)]), out).to_pylist()[0]
            steady = steady_throughput(out / "0") if regime == "saturated" and t.get("error") is None else None
            rows.append({"regime": regime, "dp": dp, "gpus": dp, "requests": n_req[regime], "rate_scale": rate,
                         **{k: t.get(k) for k in DES_COLUMNS}, "throughput_steady_tok_s": steady,
                         "throughput_per_gpu_tok_s": steady / dp if steady else None, "error": t.get("error")})
    return pa.Table.from_pylist(rows)


def analytic(case: str, layouts: Sequence[tuple[int, int, int]], context_len: float = CONTEXT_LEN,
             batches: Iterable[float] = BATCHES) -> pa.Table:
    """Steady-decode speed vs throughput per GPU of each layout's replica (closed form).

    One row per layout x micro-batch size that fits in memory (``fits`` false rows are dropped;
    a layout whose replica cannot hold the model has no rows). Throughput per GPU and cost per
    token do not depend on ``dp``: DP only adds replicas.
    """
    cfg = parse_config(compose_config([*BASE, *CASES[case]["overrides"]]))
    model = analytic_model(cfg)
    b = np.asarray(list(batches), dtype=float)
    rows = []
    for tp, pp, dp in layouts:
        split = Split(tp, pp)
        r = model.decode(split, b, context_len)
        for i in np.flatnonzero(r["fits"]):
            rows.append({"case": case, "layout": layout_label(tp, pp, dp), "tp": tp, "pp": pp, "dp": dp,
                         "batch": float(r["batch"][i]), "sequences_per_replica": float(r["batch"][i] * pp),
                         "speed_tok_s": float(r["speed_tok_s"][i]),
                         "throughput_per_gpu_tok_s": float(r["throughput_tok_s"][i] / split.gpus),
                         "usd_per_mtok": float(r["usd_per_mtok"][i]),
                         "network_fraction": float(r["network_s"][i] / r["latency_s"][i])})
    schema = pa.schema([("case", pa.string()), ("layout", pa.string()), ("tp", pa.int64()), ("pp", pa.int64()),
                        ("dp", pa.int64()), ("batch", pa.float64()), ("sequences_per_replica", pa.float64()),
                        ("speed_tok_s", pa.float64()), ("throughput_per_gpu_tok_s", pa.float64()),
                        ("usd_per_mtok", pa.float64()), ("network_fraction", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def run(root: str | Path, quick: bool = False, cases: Iterable[str] | None = None) -> dict[str, pa.Table]:
    """Run every case's layouts in every regime, the analytic view and the DP check; write Parquet under ``root``.

    Returns ``{"des", "summary", "analytic", "dp_scaling"}`` (written as
    ``root/parallelism_{name}.parquet``);
    simulation outputs of each point stay under ``root/runs/CASE/REGIME/<i>/``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_req = QUICK_MAX_REQUESTS if quick else MAX_REQUESTS
    des, ana = [], []
    for case in (cases or CASES):
        layouts = QUICK_LAYOUTS[case] if quick else CASES[case]["layouts"]
        for regime in REGIMES:
            des.append(simulate(case, regime, layouts, n_req[regime], root / "runs"))
        ana.append(analytic(case, layouts))
    out = {"des": pa.concat_tables(des)}
    out["summary"] = summarize(out["des"])
    out["analytic"] = pa.concat_tables(ana)
    out["dp_scaling"] = dp_scaling(root / "runs", quick=quick)
    return save_tables(out, root, NAME)


def load(root: str | Path) -> dict[str, pa.Table]:
    """The tables :func:`run` wrote under ``root``."""
    return load_tables(root, NAME, ("des", "summary", "analytic", "dp_scaling"))
