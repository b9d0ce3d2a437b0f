"""Headline experiment ``latency_vs_bandwidth``: grid, helpers, physics, notebook, command line.

Rules:

* the grid pins each decode batch (``max_batch_size``, enough requests, a token budget that
  prefills the whole batch in one step) and sweeps each scale with the other held at 1;
* :func:`speedups` compares the baseline with latency x0.5 and bandwidth x10 per group;
* on the quick discrete-event grid, for TP8 and TP16 at batch 1, halving per-message latency
  cuts TPOT more than 10x bandwidth does, while for the 8,192-token prefill bandwidth buys
  more than latency and more than it buys at small-batch decode;
* the notebook runs top to bottom with ``SIM_QUICK=1`` and writes its PNGs next to itself;
* ``python -m sim +experiment=latency_vs_bandwidth`` runs one point, ``-m`` the config's sweep.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import execute_notebook, run_sim, sweep_experiment

from sim.experiments import latency_vs_bandwidth as lvb

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ grid and pure helpers

def test_quick_grid_pins_batches_and_sweeps_one_scale_at_a_time():
    grid = lvb.points(quick=True)
    decode = [(lab, over) for lab, over in grid if lab["case"] == "decode"]
    prefill = [(lab, over) for lab, over in grid if lab["case"] == "prefill"]
    assert len(decode) == 2 * 2 * 2 * 3 and len(prefill) == 2 * 2 * 3
    keys = {frozenset(over) for _, over in grid}
    assert len(keys) == 1, "every point sets the same overrides, so the sweep table is rectangular"
    for lab, over in decode:
        b = lab["batch"]
        assert over["scheduler.max_batch_size"] == b
        assert over["workload.max_requests"] >= b
        assert over["scheduler.max_tokens_per_step"] >= b * over["workload.prompt_tokens"]
    for lab, over in grid:
        swept = lvb.SWEPT[lab["swept"]]
        other = lvb.SWEPT["bandwidth" if lab["swept"] == "latency" else "latency"]
        assert over[swept] == lab["scale"] and over[other] == 1.0
    assert {lab["scale"] for lab, _ in grid} == set(lvb.QUICK_SCALES)
    full = lvb.points(quick=False)
    assert {lab["batch"] for lab, _ in full} >= {1, 4, 16, 64}
    assert {lab["scale"] for lab, _ in full} == set(lvb.SCALES) and min(lvb.SCALES) <= 0.25 and max(lvb.SCALES) >= 10


def _table(rows):
    cols = ["case", "deployment", "batch", "prompt_tokens", "swept", "scale", "metric_s"]
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_speedups_from_a_hand_built_table():
    t = _table([
        ("decode", "TP8", 1, 512, "latency", 1.0, 10.0),
        ("decode", "TP8", 1, 512, "latency", 0.5, 8.0),
        ("decode", "TP8", 1, 512, "bandwidth", 1.0, 10.0),
        ("decode", "TP8", 1, 512, "bandwidth", 10.0, 9.5),
        ("prefill", "TP8", 1, 8192, "latency", 1.0, 4.0),
        ("prefill", "TP8", 1, 8192, "latency", 0.5, 3.9),
        ("prefill", "TP8", 1, 8192, "bandwidth", 1.0, 4.0),
        ("prefill", "TP8", 1, 8192, "bandwidth", 10.0, 2.0),
        ("decode", "TP16", 1, 512, "latency", 1.0, 5.0),   # no bandwidth x10 point: left out
        ("decode", "TP16", 1, 512, "latency", 0.5, 4.0),
    ])
    sp = lvb.speedups(t).to_pylist()
    assert [(r["case"], r["deployment"]) for r in sp] == [("decode", "TP8"), ("prefill", "TP8")]
    d, p = sp
    assert d["base_s"] == 10.0 and d["latency_s"] == 8.0 and d["bandwidth_s"] == 9.5
    assert d["latency_gain"] == pytest.approx(0.2) and d["bandwidth_gain"] == pytest.approx(0.05)
    assert d["latency_speedup"] == pytest.approx(1.25) and d["bandwidth_speedup"] == pytest.approx(10 / 9.5)
    assert d["latency_wins"] is True
    assert p["latency_gain"] == pytest.approx(0.025) and p["bandwidth_gain"] == pytest.approx(0.5)
    assert p["latency_wins"] is False
    other = lvb.speedups(t, latency_scale=0.5, bandwidth_scale=2.0)
    assert other.num_rows == 0


def test_label_table_aligns_labels_by_job_number():
    sweep = pa.table({"job": ["1", "0"], "tpot_p50_s": [0.02, 0.01], "ttft_p50_s": [0.5, 0.4], "error": [None, None]})
    labels = [
        {"case": "decode", "deployment": "TP8", "tp": 8, "batch": 1, "prompt_tokens": 512, "swept": "latency", "scale": 1.0},
        {"case": "prefill", "deployment": "TP16", "tp": 16, "batch": 1, "prompt_tokens": 8192, "swept": "bandwidth",
         "scale": 10.0},
    ]
    out = lvb.label_table(sweep, labels).to_pylist()
    assert out[0]["case"] == "prefill" and out[0]["metric"] == "ttft_p50_s" and out[0]["metric_s"] == 0.5
    assert out[1]["case"] == "decode" and out[1]["metric"] == "tpot_p50_s" and out[1]["metric_s"] == 0.01


# ------------------------------------------------------------------ the quick run

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvb")
    return root, lvb.run(root, quick=True)


def test_quick_run_writes_one_tidy_table(quick):
    root, table = quick
    assert table.num_rows == len(lvb.points(quick=True))
    assert all(e is None for e in table.column("error").to_pylist())
    assert all(v is not None and v > 0 for v in table.column("metric_s").to_pylist())
    for col in lvb.ID_COLUMNS + ("network.latency_scale", "network.bandwidth_scale", "tpot_p50_s", "ttft_p50_s"):
        assert col in table.column_names, col
    assert pq.read_table(root / "latency_vs_bandwidth.parquet").equals(table)


def test_pinned_batch_holds_for_most_decode_steps(quick):
    root, table = quick
    for r in table.select(["job", "case", "batch"]).to_pylist():
        if r["case"] != "decode":
            continue
        steps = pq.read_table(root / "jobs" / r["job"] / "steps.parquet").to_pydict()
        at_batch = sum(1 for b, pf in zip(steps["batch_size"], steps["prefill_tokens"]) if b == r["batch"] and pf == 0)
        assert at_batch >= 0.9 * len(steps["batch_size"]), r


def test_tpot_rises_with_latency_and_falls_with_bandwidth(quick):
    _, table = quick
    for dep in ("TP8", "TP16"):
        for b in lvb.QUICK_BATCHES:
            _, lat = lvb.series(table, "decode", dep, "latency", batch=b)
            _, bw = lvb.series(table, "decode", dep, "bandwidth", batch=b)
            assert lat == sorted(lat) and lat[0] < lat[-1]
            assert bw == sorted(bw, reverse=True)


def _gain(sp, case, dep, batch=1):
    (row,) = [r for r in sp.to_pylist() if r["case"] == case and r["deployment"] == dep and r["batch"] == batch]
    return row


def test_halving_latency_beats_tenfold_bandwidth_at_batch_1(quick):
    sp = lvb.speedups(quick[1])
    tp8, tp16 = _gain(sp, "decode", "TP8"), _gain(sp, "decode", "TP16")
    assert tp8["latency_wins"] and tp8["latency_gain"] > 3 * tp8["bandwidth_gain"] > 0
    assert tp16["latency_wins"] and tp16["latency_gain"] > 0.2 > 0.01 > tp16["bandwidth_gain"]
    assert tp16["latency_gain"] > tp8["latency_gain"], "crossing InfiniBand makes latency matter more"


def test_bandwidth_matters_for_long_prefill(quick):
    sp = lvb.speedups(quick[1])
    for dep in ("TP8", "TP16"):
        pre, dec = _gain(sp, "prefill", dep), _gain(sp, "decode", dep)
        assert not pre["latency_wins"] and pre["bandwidth_gain"] > 0.1
        assert pre["bandwidth_gain"] > 10 * dec["bandwidth_gain"]
        assert pre["latency_gain"] < dec["latency_gain"]


# ------------------------------------------------------------------ notebook and command line

def test_notebook_runs_quick_and_writes_pngs(tmp_path, monkeypatch):
    execute_notebook("latency_vs_bandwidth", tmp_path, monkeypatch)
    for png in ("latency_vs_bandwidth.png", "latency_vs_bandwidth_summary.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png
    assert (tmp_path / "runs" / "latency_vs_bandwidth" / "quick" / "latency_vs_bandwidth.parquet").is_file()


_sim = run_sim


def test_cli_runs_the_representative_point(tmp_path):
    res = _sim("-m", "sim", "+experiment=latency_vs_bandwidth", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["model"] == "llama3_70b" and summary["config"]["tp"] == 8
    assert summary["requests"]["completed"] == 3


def test_cli_multirun_sweeps_the_scales(tmp_path):
    table = sweep_experiment("latency_vs_bandwidth", tmp_path / "sweep")
    assert table.num_rows == 12 and all(e is None for e in table.column("error").to_pylist())
    rows = {(r["network.latency_scale"], r["network.bandwidth_scale"]): r["tpot_p50_s"]
            for r in table.select(["network.latency_scale", "network.bandwidth_scale", "tpot_p50_s"]).to_pylist()}
    assert rows[(0.5, 1)] < rows[(1.0, 10)] < rows[(1.0, 1)]
