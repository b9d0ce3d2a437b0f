"""Headline experiment ``serving`` (issue 13): pools, prefix caching, routers, expert parallelism.

Rules, on the quick run (the first 600 Mooncake requests on 32 H100s; DeepSeek-V3 on two nodes):

* disaggregation lowers TPOT p99 under every router and cache setting (no prefill chunk in a
  decode step), moving exactly prompt tokens x KV bytes per token for every request that decodes;
* with prefix caching, ``prefix_aware`` routing hits more than round-robin, in both deployments;
* goodput counts only requests within both SLOs;
* DeepSeek-V3 at light load: halving the per-message latency lowers TPOT more than 10x the
  bandwidth does, under tensor and expert parallelism; at heavy load with expert parallelism,
  10x bandwidth beats halving the latency (the all-to-alls carry megabytes);
* the notebook runs top to bottom with ``SIM_QUICK=1`` and writes its PNGs; the CLI runs a point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import execute_notebook

from sim.experiments import serving

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    return root, serving.run(root, quick=True)


def _pools(quick):
    return quick[1]["pools"].to_pylist()


def test_tables_are_written_and_complete(quick):
    root, tables = quick
    for key in ("pools", "moe"):
        np.testing.assert_equal(pq.read_table(root / f"serving_{key}.parquet").to_pydict(), tables[key].to_pydict())
    rows = _pools(quick)
    assert len(rows) == 10 and all(r["completed"] == r["requests"] == serving.QUICK_REQUESTS for r in rows)


def test_disaggregation_lowers_the_tpot_tail_under_every_router(quick):
    rows = _pools(quick)
    by = {(r["deployment"], r["prefix_caching"], r["router"]): r for r in rows}
    for caching, router in serving.CACHING:
        colo, dis = by[("colocated", caching, router)], by[("disaggregated", caching, router)]
        assert dis["tpot_p99_s"] < 0.5 * colo["tpot_p99_s"], (caching, router)
        assert dis["tpot_p99_s"] < 2.5 * dis["tpot_p50_s"]           # decode steps carry only decode
        assert colo["kv_moved_GB"] == 0.0 and dis["kv_moved_GB"] > 0
        assert dis["kv_exposed_p99_s"] < 0.05                          # layer-wise streaming hides the move


def test_kv_moved_is_prompt_tokens_times_kv_bytes(quick):
    row = next(r for r in _pools(quick) if r["deployment"] == "disaggregated")
    req = pq.read_table(Path(row["job"]) / "requests.parquet")
    prompt = np.array(req.column("prompt_tokens").to_pylist())
    output = np.array(req.column("output_tokens").to_pylist())
    assert row["kv_moved_GB"] * 1e9 == pytest.approx(float((prompt[output > 1] * 327680.0).sum()), rel=1e-12)


def test_prefix_aware_routing_hits_more_than_round_robin(quick):
    by = {(r["deployment"], r["prefix_caching"], r["router"]): r for r in _pools(quick)}
    for dep in serving.DEPLOYMENTS:
        rr, pa_ = by[(dep, True, "round_robin")], by[(dep, True, "prefix_aware")]
        assert pa_["prefix_hit_rate"] > 2 * rr["prefix_hit_rate"] > 0
        assert pa_["ttft_p50_s"] < rr["ttft_p50_s"]
        assert by[(dep, False, "round_robin")]["prefix_hit_rate"] == 0.0


def test_goodput_counts_requests_within_both_slos():
    table = pa.table({"status": ["completed", "completed", "completed", "rejected", "completed"],
                      "ttft_s": [1.0, 3.0, 0.5, float("nan"), 1.9],
                      "tpot_s": [0.01, 0.01, 0.2, float("nan"), float("nan")]})
    assert serving.goodput(table, 10.0) == pytest.approx(0.2)     # the first and the one-token request


def test_goodput_never_exceeds_throughput(quick):
    for r in _pools(quick):
        assert 0 < r["goodput_rps"] <= r["throughput_rps"] + 1e-12


def _tpot(moe, load, ep, latency=1.0, bandwidth=1.0):
    return next(r["tpot_mean_s"] for r in moe.to_pylist() if r["load"] == load and r["ep"] == ep
                and r["latency_scale"] == latency and r["bandwidth_scale"] == bandwidth)


def test_deepseek_latency_beats_bandwidth_at_light_load_not_at_heavy(quick):
    moe = quick[1]["moe"]
    for ep in (1, 16):
        base = _tpot(moe, "light", ep)
        assert base - _tpot(moe, "light", ep, latency=0.5) > 3 * (base - _tpot(moe, "light", ep, bandwidth=10.0))
        assert _tpot(moe, "light", ep, latency=2.0) > base
    heavy = _tpot(moe, "heavy", 16)
    assert heavy - _tpot(moe, "heavy", 16, bandwidth=10.0) > heavy - _tpot(moe, "heavy", 16, latency=0.5)


def test_notebook_runs_quick_and_writes_pngs(tmp_path, monkeypatch):
    execute_notebook("serving", tmp_path, monkeypatch)
    for png in ("serving.png", "serving_moe.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert (tmp_path / "runs" / "serving" / "quick" / "serving_pools.parquet").is_file()


def test_cli_runs_a_point(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, "-m", "sim", "+experiment=serving", "disagg=pools",
                          "disagg.prefill.replicas=3", "disagg.decode.replicas=1", "workload.max_requests=60",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env=env)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["requests"]["completed"] == 60 and summary["kv_transfer"]["transfers"] > 0
    assert (tmp_path / "run" / "transfers.parquet").is_file()
