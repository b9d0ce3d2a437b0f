"""Fast-forwarded steady decode records exactly what stepping one iteration at a time does.

Rule: ``sim.fast_forward=true`` (default) and ``false`` give equal ``requests.parquet`` and
``steps.parquet`` (every column, floats to 1e-9 relative; steps compared in (replica, step)
order, since a span's rows are written when it closes) and equal summaries, over random
configurations (two per layout) that cover the scheduler (chunked or whole prefill, block
sizes, token budgets and batch limits), every layout (tp 1 and 2, pp = 2, dp = 3 behind
either router, 2-D TP, a mixed H100/A100 fleet behind either causal router, draft-head speculation, a KV cache so small
that requests are preempted and recomputed); and fast-forwarding schedules fewer events.
"""
from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest

from helpers import assert_equal_tables

from sim.app import run
from sim.config.compose import compose_config

FLOAT_RTOL = 1e-9


LAYOUTS = ("tp1", "tp2", "pp2", "dp", "lot", "tp2d", "fleet", "spec", "tight")


def random_config(rng: random.Random, layout: str) -> list[str]:
    o = ["workload=synthetic", "model=llama3_8b", "output.progress=never", "debug.check_invariants=true",
         f"seed={rng.randrange(1000)}", f"workload.max_requests={rng.choice([40, 80, 120])}",
         f"workload.rate_per_s={rng.choice([2, 10, 40])}",
         f"workload.output_tokens={{dist: lognormal, median: {rng.choice([8, 40, 120])}, sigma: 0.8, min: 1, max: 600}}",
         f"workload.prompt_tokens={{dist: lognormal, median: {rng.choice([64, 300, 900])}, sigma: 0.8, min: 1, max: 3000}}",
         f"scheduler.chunked_prefill={rng.choice(['true', 'false'])}",
         f"scheduler.max_tokens_per_step={rng.choice([512, 2048, 8192])}",
         f"scheduler.max_batch_size={rng.choice([4, 64, 256])}",
         f"scheduler.block_size={rng.choice([1, 16, 32])}"]
    if layout == "tp1":
        o += ["parallel.tp=1"]
    elif layout == "tp2":
        o += ["parallel.tp=2"]
    elif layout == "pp2":
        o += ["parallel.tp=1", "parallel.pp=2"]
    elif layout == "dp":
        o += ["parallel.tp=2", "parallel.dp=3", f"parallel.router={rng.choice(['round_robin', 'least_outstanding_tokens', 'least_outstanding_tokens_oracle'])}"]
    elif layout == "lot":   # the causal router reads tokens generated so far, mid-span too
        o += ["parallel.tp=1", "parallel.dp=4", "parallel.router=least_outstanding_tokens", "workload.rate_per_s=40"]
    elif layout == "tp2d":
        o += ["parallel.tp=4", "parallel.tp_cols=2"]
    elif layout == "fleet":
        o += ["fleet=[{hardware: h100, replicas: 2, tp: 1}, {hardware: a100, replicas: 1, tp: 2}]",
              f"parallel.router={rng.choice(['least_outstanding_tokens', 'least_outstanding_time'])}"]
    elif layout == "spec":
        o += ["parallel.tp=2", "speculative=self", f"speculative.num_tokens={rng.choice(['2', 'auto'])}"]
    else:  # a KV cache of a few thousand tokens: preemption and recomputation
        o += ["parallel.tp=1", "engine.gpu_memory_utilization=0.23", "workload.rate_per_s=40",
              "workload.max_requests=80"]
    return o


def _tables(path):
    req = pq.read_table(path / "requests.parquet")
    steps = pq.read_table(path / "steps.parquet").sort_by([("replica", "ascending"), ("step", "ascending")])
    return req, steps, json.loads((path / "summary.json").read_text())


def _assert_equal_tables(a, b, what):
    assert_equal_tables(a, b, what, FLOAT_RTOL)


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if path == "" and k == "sim":
                continue  # wall time and event counts differ by design
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=FLOAT_RTOL, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.slow
@pytest.mark.parametrize("layout,seed", [(lay, s) for lay in LAYOUTS for s in (0, 1)])
def test_fast_forward_equals_stepping(tmp_path, layout, seed):
    overrides = random_config(random.Random(f"{layout}/{seed}"), layout)
    out = {}
    for ff in ("true", "false"):
        run(compose_config([*overrides, f"sim.fast_forward={ff}"]), tmp_path / ff)
        out[ff] = _tables(tmp_path / ff)
    (req_a, steps_a, sum_a), (req_b, steps_b, sum_b) = out["true"], out["false"]
    _assert_equal_tables(req_a, req_b, "requests")
    _assert_equal_tables(steps_a, steps_b, "steps")
    _close(sum_a, sum_b)
    assert sum_a["sim"]["events"] <= sum_b["sim"]["events"]
    if layout == "tight":   # the KV cache is a few thousand tokens: requests are preempted and recomputed
        assert sum_a["requests"]["preemptions"] > 0


def test_fast_forward_takes_few_events_on_steady_decode(tmp_path):
    """Sixteen requests decoding 500 tokens together: a handful of events, not 500 steps' worth,
    and still one row per step in steps.parquet (two prefill steps under the 2,048-token
    budget, the second also sampling; then 500 decode steps, the first half one ahead)."""
    trace = tmp_path / "steady.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "0.0,256,500\n" * 16)
    cfg = compose_config(["model=llama3_8b", "parallel.tp=1", f"workload.path={trace}", "output.progress=never"])
    s = run(cfg, tmp_path / "ff")
    assert s["steps"] == 502 and s["sim"]["events"] < 50, s["sim"]
