"""Predicted vs published (sim/tools/validation/published.py, sim/tools/validation/published_rows.yaml).

The published part of the validation report must evaluate every row through the simulator,
state the engine profile and config of each, and keep the directions the measurements show.
Error levels are held loosely (they document where the model stands, see the README), but a
regression that breaks a group's order of magnitude fails here.
"""
from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import ConfigError
from sim.policy.speculative import expected_tokens
from workloads.lengths import quantiles_mean
from sim.tools.validation.published import (
    ROWS_FILE,
    Evaluator,
    acceptance_for,
    group_summary,
    load_rows,
    markdown,
)


@pytest.fixture(scope="module")
def table(published_rows_table):
    return published_rows_table


@pytest.fixture(scope="module")
def by_id(table):
    d = table.to_pydict()
    return {i: {k: d[k][n] for k in d} for n, i in enumerate(d["id"])}


def test_every_row_is_evaluated_with_its_engine_and_source(table):
    rows = load_rows()
    assert table.num_rows == len(rows) >= 70
    d = table.to_pydict()
    for i in range(table.num_rows):
        assert math.isfinite(d["predicted"][i]) and d["predicted"][i] > 0, d["id"][i]
        assert d["engine"][i] in ("optimized", "pytorch_cudagraph", "pytorch_eager", "vllm", "sglang", "trtllm", "hf_eager"), d["id"][i]
        assert d["role"][i] in ("fit", "fit_workload", "predicted") and d["origin"][i]
        if d["role"][i] == "predicted":
            assert d["held_out_error"][i] == d["error"][i]
        assert d["source"][i] and d["tier"][i] in ("A", "B")
        assert d["error"][i] == pytest.approx(d["predicted"][i] / d["measured"][i] - 1.0)
    groups = set(d["group"])
    assert {"single_gpu_decode", "nim_70b_fp8_tp2", "mlperf_llama2_70b", "trtllm_ttft", "trtllm_throughput",
            "nccl_allreduce", "custom_allreduce", "spec_bench", "serving_decode"} <= groups


def test_summary_and_markdown(table):
    s = group_summary(table)
    assert s["all"]["rows"] == table.num_rows
    assert all(0 <= g["median_abs_error"] <= g["worst_abs_error"] for g in s.values())
    md = markdown(table, s)
    assert md.startswith("# Validation against published numbers")
    assert md.count("\n| ") >= table.num_rows + len(s)


def test_single_gpu_decode_within_a_quarter(table):
    """Memory-bound single-GPU decode is the best-understood case (speed of light x efficiency)."""
    s = group_summary(table)
    assert s["single_gpu_decode"]["median_abs_error"] <= 0.15
    assert s["single_gpu_decode"]["worst_abs_error"] <= 0.25


def test_directions_the_measurements_show(by_id):
    p = {k: v["predicted"] for k, v in by_id.items()}
    # NIM ITL grows with concurrency; TTFT with the prompt
    itl = [p[f"nim_70b_itl_c{c}"] for c in (5, 25, 50, 100)]
    assert itl == sorted(itl) and itl[-1] > 3 * p["nim_70b_itl_c1_5000_500"]
    assert p["nim_70b_ttft_5000"] > 5 * p["nim_70b_ttft_500"]
    # longer prompts per output token lower the offline throughput
    assert p["trtllm_tput_70b_h100tp2_128_128"] > p["trtllm_tput_70b_h100tp2_1000_1000"] > p["trtllm_tput_70b_h100tp2_5000_500"]
    # 8-bit weights decode faster than 16-bit on the same card
    assert p["calm_mistral7b_8bit_4090"] < 0.6 * p["calm_mistral7b_fp16_4090"]
    # Spec-Bench: more accepted tokens per step, more speedup; every method speeds up
    assert p["specbench_7b_eagle"] > p["specbench_7b_hydra"] > p["specbench_7b_medusa"] > p["specbench_7b_sps"] > 1.0
    # NCCL through PyTorch is slower than the custom one-shot kernel at the same size and TP
    assert p["nccl_torch_8xh100_128B"] > 2 * p["customar_h100_tp8_512"]


def test_mlperf_server_rows_take_their_output_lengths_from_the_logs():
    """The output-length knots come from the logged latency percentiles; their mean must give
    back the logged tokens per sample (21,605.79 tok/s / 74.42 samples/s = 290.3)."""
    rows = [r for r in load_rows() if r["kind"] == "server" and r["group"] == "mlperf_llama2_70b"]
    assert len(rows) == 8
    for r in rows:
        osl = r["params"]["osl"]
        assert osl["dist"] == "quantiles" and osl["values"][-1] == 1024      # MLPerf's output cap
        assert quantiles_mean(osl["p"], osl["values"]) == pytest.approx(21605.79 / 74.42, rel=0.01)
        assert r["params"]["warmup_requests"] < r["params"]["requests"]


SMALL_SERVER = (["model=llama3_8b", "hardware=h100", "parallel.tp=1", "parallel.dp=2"],
                {"rate_per_s": 40.0, "isl": 200, "osl": {"dist": "quantiles", "p": [0, 1], "values": [20, 60]},
                 "requests": 300})


def test_server_rows_measure_after_the_warmup():
    """``warmup_requests`` leaves the first arrivals out of the statistics: none left out gives
    the run's own summary, all but one leaves the last arrival's latencies."""
    from sim.app import run
    from sim.tools.validation.published import _server_run

    ev = Evaluator()
    cfg, p = SMALL_SERVER
    whole = _server_run(ev, cfg, p)
    later = _server_run(ev, cfg, {**p, "warmup_requests": 299})
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(ev.config(cfg + [
            "workload=synthetic", "workload.rate_per_s=40.0", "workload.arrival=poisson", "workload.prompt_tokens=200",
            "workload.output_tokens={dist: quantiles, p: [0, 1], values: [20, 60]}", "workload.max_requests=300",
            "seed=0", "output.progress=never", "output.write_parquet=true"]), tmp)
        req = pq.read_table(Path(tmp) / "requests.parquet").to_pydict()
    last = max(range(len(req["arrival_s"])), key=req["arrival_s"].__getitem__)
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        for stat in ("mean", "p50", "p99"):
            assert whole[name][stat] == pytest.approx(summary[name][stat], rel=1e-12)
        assert later[name]["mean"] == later[name]["p99"] == pytest.approx(req[name][last], rel=1e-12)


@pytest.mark.parametrize("change, fragment", [
    ({"warmup_requests": 300}, "params.warmup_requests=300 must be an integer from 0 to requests - 1"),
    ({"warmup_requests": -5}, "params.warmup_requests=-5"),
    ({"warmup_requests": 2.5}, "params.warmup_requests=2.5"),
])
def test_server_warmup_must_leave_requests(change, fragment):
    from sim.tools.validation.published import _server_run

    cfg, p = SMALL_SERVER
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        _server_run(Evaluator(), cfg, {**p, **change})


def test_server_rows_refuse_requests_that_did_not_complete_and_unknown_metrics():
    """A request the run rejects would drop out of the latencies unseen: the row fails instead."""
    from sim.tools.validation.published import _server, _server_run

    cfg, p = SMALL_SERVER
    with pytest.raises(ConfigError, match="did not complete"):
        _server_run(Evaluator(), cfg + ["scheduler.max_model_len=100"], {**p, "requests": 20})
    with pytest.raises(ConfigError, match="metric='ttft_s.p95' must be one of"):
        _server(Evaluator(), cfg, p, {"id": "x", "metric": "ttft_s.p95"})


def test_mlperf_prompt_length_fitted_on_one_row_predicts_the_h200(by_id):
    """The unpublished mean prompt length is fitted on the H100 Offline row (zero error by
    construction); the H200 Offline row is then a prediction of the H200/H100 ratio."""
    assert by_id["mlperf_70b_offline_8xh100"]["error"] == pytest.approx(0.0, abs=1e-3)
    assert abs(by_id["mlperf_70b_offline_8xh200"]["error"]) <= 0.10
    ev = Evaluator()
    rows = {r["id"]: r for r in load_rows()}
    assert 100 <= ev.fitted_isl(rows["mlperf_70b_offline_8xh100"]) <= 2000


@settings(max_examples=50, deadline=None)
@given(gamma=st.integers(1, 10), frac=st.floats(0.0, 1.0))
def test_acceptance_inverts_expected_tokens(gamma, frac):
    tau = 1.0 + frac * gamma
    a = acceptance_for(tau, gamma)
    assert 0.0 <= a <= 1.0
    assert expected_tokens(a, gamma) == pytest.approx(tau, rel=1e-6, abs=1e-6)


def test_bad_rows_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing field 'measured'"):
        bad = tmp_path / "rows.yaml"
        bad.write_text(yaml.safe_dump([{"id": "x", "group": "g", "kind": "decode_ms", "source": "s", "tier": "A",
                                        "config": [], "origin": "o"}]))
        load_rows(bad)
    with pytest.raises(ConfigError, match="kind='nope'"):
        bad.write_text(yaml.safe_dump([{"id": "x", "group": "g", "kind": "nope", "source": "s", "tier": "A",
                                        "measured": 1, "config": [], "origin": "o"}]))
        load_rows(bad)
    with pytest.raises(ConfigError, match="tau"):
        acceptance_for(9.0, 4)


def test_rows_file_is_the_shipped_one():
    """The rows live beside the module that reads them and are package data (pyproject.toml)."""
    import tomllib

    assert ROWS_FILE.is_file() and ROWS_FILE.parent.name == "validation"
    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert ROWS_FILE.name in meta["tool"]["setuptools"]["package-data"]["sim.tools.validation"]
