"""Headline experiment ``time_breakdown``: binning, physics of the four parts, notebook, CLI.

Rules:

* :func:`shares_by_batch` keeps decode-only steps, bins them by batch size and gives
  time-weighted shares of the four parts that sum to 1 in every bin;
* on the quick discrete-event run (Llama-3-70B TP8, batch ramping to ~300): the fixed share
  falls and the arithmetic share rises as the batch grows, the HBM share falls; the network
  share *rises* from batch 1 to ~64 (each all-reduce carries 16 KB per sequence, so it leaves
  the latency-bound regime), so network + fixed peaks at a few dozen sequences and falls
  beyond; the closed-form model agrees with the simulation bin by bin;
* the notebook runs top to bottom with ``SIM_QUICK=1`` and writes its PNG next to itself;
* ``python -m sim +experiment=time_breakdown`` runs the experiment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import execute_notebook

from sim.experiments import time_breakdown as tbd

ROOT = Path(__file__).resolve().parent.parent


def _steps(rows):
    cols = ["batch_size", "prefill_tokens", "duration_s", "compute_s", "memory_s", "network_s", "fixed_s",
            "kv_blocks_used"]
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_shares_by_batch_from_a_hand_built_table():
    steps = _steps([
        # batch, prefill, duration, compute, memory, network, fixed, kv blocks
        (1, 0, 10.0, 0.0, 6.0, 1.0, 3.0, 32),
        (1, 0, 10.0, 0.0, 6.0, 1.0, 3.0, 34),
        (1, 512, 50.0, 30.0, 10.0, 5.0, 5.0, 32),     # carries a prefill chunk: left out
        (3, 0, 10.0, 1.0, 5.0, 2.0, 2.0, 96),
        (5, 0, 20.0, 4.0, 10.0, 4.0, 2.0, 160),
        (7, 0, 20.0, 6.0, 8.0, 4.0, 2.0, 224),
        (40, 0, 30.0, 10.0, 10.0, 5.0, 5.0, 1000),    # beyond the last edge: left out
    ])
    out = tbd.shares_by_batch(steps, bins=[1, 2, 4, 8, 16]).to_pylist()
    assert [(r["bin_lo"], r["bin_hi"], r["steps"]) for r in out] == [(1, 2, 2), (2, 4, 1), (4, 8, 2)]
    first, second, third = out
    assert first["memory_share"] == pytest.approx(0.6) and first["fixed_share"] == pytest.approx(0.3)
    assert first["context_mean"] == pytest.approx(33 * 16) and first["step_mean_s"] == pytest.approx(10.0)
    assert third["batch_mean"] == 6.0
    # time-weighted: (4 + 6) / (20 + 20)
    assert third["compute_share"] == pytest.approx(0.25) and third["compute_mean_s"] == pytest.approx(5.0)
    for r in out:
        assert sum(r[f"{p}_share"] for p in tbd.PARTS) == pytest.approx(1.0, abs=1e-12)


def test_shares_by_batch_rejects_bad_bins():
    steps = _steps([(1, 0, 1.0, 0.0, 1.0, 0.0, 0.0, 1)])
    for bad in ([1], [4, 2], [1, 1, 2]):
        with pytest.raises(ValueError):
            tbd.shares_by_batch(steps, bins=bad)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("tbd")
    return root, tbd.run(root, quick=True)


def _col(table, name):
    return table.column(name).to_pylist()


def test_quick_run_reaches_a_few_hundred_and_shares_sum_to_one(quick):
    root, table = quick
    assert pq.read_table(root / "time_breakdown.parquet").equals(table)
    assert (tbd.run_dir(root) / "steps.parquet").is_file()
    assert max(_col(table, "batch_mean")) > 200 and min(_col(table, "batch_mean")) == 1.0
    assert table.num_rows >= 12
    for r in table.to_pylist():
        assert sum(r[f"{p}_share"] for p in tbd.PARTS) == pytest.approx(1.0, abs=1e-9)
        assert sum(r[f"analytic_{p}_share"] for p in tbd.PARTS) == pytest.approx(1.0, abs=1e-9)


def test_fixed_and_memory_shares_fall_compute_share_rises(quick):
    _, table = quick
    fixed, compute, memory = _col(table, "fixed_share"), _col(table, "compute_share"), _col(table, "memory_share")
    assert all(b <= a + 0.01 for a, b in zip(fixed, fixed[1:])), fixed
    assert all(b >= a - 1e-6 for a, b in zip(compute, compute[1:])), compute
    assert fixed[-1] < 0.7 * fixed[0]
    assert compute[0] < 0.01 and compute[-1] > 0.1
    assert memory[-1] < memory[0] - 0.05


def test_network_share_grows_then_latency_bound_share_falls(quick):
    _, table = quick
    batch = _col(table, "batch_mean")
    network = _col(table, "network_share")
    both = [n + f for n, f in zip(network, _col(table, "fixed_share"))]
    mid = max(i for i, b in enumerate(batch) if b <= 64)
    assert network[mid] > network[0] + 0.05, "all-reduces grow with the batch and stop being latency-bound"
    assert both[-1] < max(both) - 0.03, "past a few dozen sequences network + fixed share falls"


def test_analytic_model_agrees_with_the_simulation(quick):
    _, table = quick
    for r in table.to_pylist():
        assert r["analytic_step_s"] == pytest.approx(r["step_mean_s"], rel=0.03)
        for p in tbd.PARTS:
            assert r[f"analytic_{p}_share"] == pytest.approx(r[f"{p}_share"], abs=0.02), (p, r["bin_lo"])


def test_notebook_runs_quick_and_writes_png(tmp_path, monkeypatch):
    execute_notebook("time_breakdown", tmp_path, monkeypatch)
    assert (tmp_path / "time_breakdown.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "time_breakdown" / "quick" / "time_breakdown.parquet").is_file()


def test_cli_runs_the_experiment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, "-m", "sim", "+experiment=time_breakdown", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["tp"] == 8 and summary["requests"]["completed"] == 500
    steps = pq.read_table(tmp_path / "run" / "steps.parquet")
    assert max(steps.column("batch_size").to_pylist()) > 256
