"""Headline experiment ``scaling_laws``: max decode speed vs parameters and HBM bandwidth.

Acceptance (Epoch AI, "Inference economics of language models"; physics.md §4), with
``assumptions=epoch`` for Llama-3-70B on H100:

* max speed ~ params^k with k in [-0.6, -0.4] (Epoch: -1/2), over the dense models;
* max speed ~ HBM-bandwidth^k with k in [0.25, 0.40] (Epoch: +1/3);
* 10x interconnect bandwidth changes the maximum speed by less than 5 %;
* halving the per-message latency raises it by more than 25 %.

Plus the helpers on synthetic data, the absolute maxima against Epoch's reproduced numbers,
the notebook (quick settings) and ``python -m sim +experiment=scaling_laws``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import execute_notebook

from sim.experiments import scaling_laws as sl

ROOT = Path(__file__).resolve().parent.parent
EPOCH = ["assumptions=epoch"]
#: max_gpus 128 keeps every epoch optimum (<= 64 GPUs) strictly inside the search
SEARCH = {"max_gpus": 128, "batch_points": 12}
ACCEPTANCE_MODELS = ("llama3_8b", "qwen2_5_14b", "llama3_70b", "llama3_405b")


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("k", [-0.5, 1.0 / 3.0, 2.0, -1.0])
def test_fit_exponent_recovers_power_law(k):
    x = np.geomspace(0.3, 400.0, 9)
    assert sl.fit_exponent(x, 7.5 * x ** k) == pytest.approx(k, abs=1e-12)


def test_fit_exponent_is_least_squares_in_log_log():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    y = x ** -0.5 * np.array([1.1, 0.9, 1.1, 0.9])  # multiplicative noise around a -1/2 law
    expected = np.polyfit(np.log(x), np.log(y), 1)[0]
    assert sl.fit_exponent(list(x), list(y)) == pytest.approx(expected)
    assert -0.6 < sl.fit_exponent(x, y) < -0.4


def test_fit_exponent_needs_two_distinct_x():
    with pytest.raises(ValueError):
        sl.fit_exponent([2.0], [1.0])
    with pytest.raises(ValueError):
        sl.fit_exponent([2.0, 2.0], [1.0, 3.0])


# ---------------------------------------------------------------- acceptance, assumptions=epoch

@pytest.fixture(scope="module")
def epoch_base():
    return sl.max_speed([*EPOCH, "model=llama3_70b"], SEARCH)


def test_max_speed_reports_the_frontier_optimum(epoch_base):
    r = epoch_base
    assert r["model"] == "llama3_70b" and r["hardware"] == "h100_epoch" and r["engine"] == "epoch"
    assert r["hbm_bandwidth_GBps"] == 3300
    assert r["max_speed_tok_s"] == pytest.approx(1.0 / r["latency_s"])
    parts = r["compute_s"] + r["memory_s"] + r["network_s"] + r["fixed_s"]
    assert parts >= r["latency_s"] * 0.999  # perfect overlap: compute and memory may both be counted
    assert r["gpus"] == r["tp"] * r["pp"] and not r["at_search_edge"]


@pytest.mark.parametrize("model,epoch_tok_s", [("llama3_8b", 483.6), ("llama3_70b", 125.0), ("llama3_405b", 57.1)])
def test_epoch_maxima_close_to_epochs_own_code(model, epoch_tok_s):
    """published_numbers.md §5.3: Epoch's notebook gives 483.6 / 125.0 / 57.1 tok/s (H100, bf16)."""
    r = sl.max_speed([*EPOCH, f"model={model}"], SEARCH)
    assert r["max_speed_tok_s"] == pytest.approx(epoch_tok_s, rel=0.05)
    assert not r["at_search_edge"]


def test_acceptance_speed_vs_params_exponent():
    t = sl.params_sweep(ACCEPTANCE_MODELS, EPOCH, SEARCH)
    assert t.column("model").to_pylist() == list(ACCEPTANCE_MODELS)
    speeds = t.column("max_speed_tok_s").to_pylist()
    assert speeds == sorted(speeds, reverse=True)
    assert not any(t.column("at_search_edge").to_pylist())
    k = sl.fit_exponent(t.column("params").to_pylist(), speeds)
    assert -0.6 <= k <= -0.4, k


def test_acceptance_speed_vs_hbm_bandwidth_exponent():
    factors = (0.25, 0.5, 1.0, 2.0, 4.0)
    t = sl.bandwidth_sweep(factors, [*EPOCH, "model=llama3_70b"], SEARCH)
    bw = t.column("hbm_bandwidth_GBps").to_pylist()
    assert bw == pytest.approx([3300 * f for f in factors])  # scales the base hardware's bandwidth
    speeds = t.column("max_speed_tok_s").to_pylist()
    assert speeds == sorted(speeds)
    assert not any(t.column("at_search_edge").to_pylist())
    k = sl.fit_exponent(bw, speeds)
    assert 0.25 <= k <= 0.40, k


def test_acceptance_network_bandwidth_barely_helps_latency_helps_a_lot(epoch_base):
    t = sl.network_sweep([(1.0, 10.0), (0.5, 1.0)], [*EPOCH, "model=llama3_70b"], SEARCH)
    bw10, lat_half = t.to_pylist()
    assert bw10["bandwidth_scale"] == 10 and lat_half["latency_scale"] == 0.5
    assert bw10["speed_ratio"] == pytest.approx(bw10["max_speed_tok_s"] / epoch_base["max_speed_tok_s"])
    assert abs(bw10["speed_ratio"] - 1.0) < 0.05, bw10["speed_ratio"]
    assert lat_half["speed_ratio"] > 1.25, lat_half["speed_ratio"]


def test_measured_assumptions_keep_the_directions():
    """No acceptance range under the default assumptions; the signs and the network claims hold."""
    t = sl.network_sweep([(1.0, 10.0), (0.5, 1.0)], ["model=llama3_70b"], SEARCH)
    bw10, lat_half = t.to_pylist()
    assert abs(bw10["speed_ratio"] - 1.0) < 0.05
    assert lat_half["speed_ratio"] > 1.1
    b = sl.bandwidth_sweep((0.5, 2.0), ["model=llama3_70b"], SEARCH)
    assert b.column("hbm_bandwidth_GBps").to_pylist() == pytest.approx([1675.0, 6700.0])  # datasheet 3.35 TB/s
    assert sl.fit_exponent(b.column("hbm_bandwidth_GBps").to_pylist(), b.column("max_speed_tok_s").to_pylist()) > 0


# ---------------------------------------------------------------- notebook and command line

def test_notebook_runs_quick_and_writes_its_figure(tmp_path, monkeypatch):
    nb = execute_notebook("scaling_laws", tmp_path, monkeypatch, SIM_OUT=str(tmp_path / "data"))
    png = tmp_path / "scaling_laws.png"
    assert png.is_file() and png.stat().st_size > 10_000
    tables = sl.load(tmp_path / "data")
    exps = {(r["assumptions"], r["law"]): r["exponent"] for r in tables["exponents"].to_pylist()}
    assert -0.6 <= exps[("epoch", "params")] <= -0.4
    assert 0.25 <= exps[("epoch", "hbm_bandwidth")] <= 0.40
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "hbm_bandwidth" in text and "-0.500" in text


def test_cli_experiment_runs_the_fastest_epoch_deployment(tmp_path, epoch_base):
    """``+experiment=scaling_laws``: the DES of the frontier's fastest 70B deployment (TP16, batch 1)."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "sim", "+experiment=scaling_laws", f"hydra.run.dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["tp"] == epoch_base["tp"] == 16 and summary["config"]["engine"] == "epoch"
    assert summary["requests"]["completed"] == summary["requests"]["total"] > 0
    # one sequence per step: the simulated time per output token is the frontier's 1 / max speed
    # (the trace's ~2k-token contexts add a fraction of a percent of KV reads)
    assert summary["tpot_s"]["p50"] == pytest.approx(1.0 / epoch_base["max_speed_tok_s"], rel=0.02)
