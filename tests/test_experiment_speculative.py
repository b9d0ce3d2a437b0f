"""Headline experiment ``speculative``: grid, helpers, physics, notebook, command line.

Rules:

* the grid is one-factor-at-a-time sweeps around the centre point, deduplicated, with one
  ``none`` baseline per deployment x batch x latency scale; every point pins its batch (waves of
  ``batch`` identical requests arriving together, enough of them to prefill in one step) and
  reads all of its trace (``workload.max_requests``);
* :func:`speedups` divides each speculative run's per-request speed by its matching baseline's;
* on the quick discrete-event grid (run once, by the notebook): an 8B draft's speed-up at batch 1
  beats batch 64, the speed-up rises with acceptance, draft heads across two nodes gain more at
  latency x2 than x0.5, while the 8B draft sharded over the same GPUs does not;
* the closed form agrees with the simulation at the centre point;
* the notebook runs top to bottom with ``SIM_QUICK=1`` and writes its PNGs next to itself;
* ``python -m sim +experiment=speculative`` runs one point, ``-m`` the config's sweep.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_sim, sweep_experiment

from sim.experiments import speculative as spec

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ grid and pure helpers

def test_quick_grid_is_one_factor_sweeps_around_the_centre():
    settings = spec.spec_settings(quick=True)
    keys = [tuple(s[k] for k in spec.FACTORS) for s in settings]
    assert len(keys) == len(set(keys)), "shared points run once"
    assert tuple(spec.CENTER[k] for k in spec.FACTORS) in keys
    for s in settings:
        off = [k for k in spec.FACTORS if s[k] != spec.CENTER[k]]
        assert len(off) <= 1, s
    for factor, vals in spec.QUICK_SWEEPS.items():
        assert {s[factor] for s in settings} == set(vals), factor
    full = spec.spec_settings(quick=False)
    assert {s["num_tokens"] for s in full} == {str(g) for g in range(1, 9)} | {"auto"}
    assert {s["batch"] for s in full} >= {1, 4, 16, 64, 128}
    assert min(s["acceptance"] for s in full) <= 0.5 and max(s["acceptance"] for s in full) >= 0.95
    assert {s["latency_scale"] for s in full} >= {0.5, 2.0, 4.0}
    assert any(s["num_tokens"] == "auto" and s["batch"] == 64 for s in full), "batch sweep at auto too"


def test_points_pin_batches_and_pair_every_run_with_a_baseline(tmp_path):
    grid = spec.points(quick=True, trace_dir=tmp_path)
    assert len(grid) == len(spec.DEPLOYMENTS) * (len(spec.METHODS) * len(spec.spec_settings(True)) + 4)
    bases = {(lab["deployment"], lab["batch"], lab["latency_scale"]) for lab, _ in grid if lab["method"] == "none"}
    for lab, over in grid:
        b = lab["batch"]
        assert over["scheduler.max_batch_size"] == b
        assert over["scheduler.max_tokens_per_step"] >= b * spec.PROMPT
        assert over["workload.max_requests"] == lab["requests"] == lab["waves"] * b
        assert lab["requests"] * spec.OUTPUT >= spec.QUICK_MIN_DECODE_TOKENS
        assert over["network.latency_scale"] == lab["latency_scale"]
        assert over["parallel.tp"] == lab["tp"]
        assert Path(over["workload.path"]).parent == tmp_path
        if lab["method"] == "none":
            assert over["speculative"] == "none" and "speculative.acceptance" not in over
        else:
            assert (lab["deployment"], b, lab["latency_scale"]) in bases
            assert over["speculative"] == lab["method"]
            assert over["speculative.num_tokens"] == lab["num_tokens"]
            assert over["speculative.acceptance"] == lab["acceptance"]
            assert (over.get("speculative.draft_model") == "llama3_8b") == (lab["method"] == "draft")
    paths = spec.write_traces(grid)
    assert len(paths) == len({over["workload.path"] for _, over in grid})
    lines = Path(paths[0]).read_text().splitlines()
    assert lines[0] == "arrival_s,prompt_tokens,output_tokens"


def test_trace_waves_arrive_together_and_far_apart():
    text = spec.trace_text(batch=3, waves=2, prompt=10, output=5, gap_s=50.0)
    rows = [r.split(",") for r in text.splitlines()[1:]]
    assert [float(r[0]) for r in rows] == [0.0, 0.0, 0.0, 50.0, 50.0, 50.0]
    assert all(r[1:] == ["10", "5"] for r in rows)
    assert spec.waves_for(1, 4096, 256) == 16 and spec.waves_for(64, 4096, 256) == 1
    assert spec.waves_for(3, 1000, 100) == 4


def _table(rows):
    cols = ["method", "deployment", "tp", "acceptance", "num_tokens", "batch", "latency_scale", "tpot_mean_s"]
    types = [pa.string(), pa.string(), pa.int64(), pa.float64(), pa.string(), pa.int64(), pa.float64(), pa.float64()]
    return pa.table({c: pa.array([r[i] for r in rows], t) for i, (c, t) in enumerate(zip(cols, types))})


def test_speedups_from_a_hand_built_table():
    t = _table([
        ("none", "TP8", 8, None, None, 1, 1.0, 0.010),
        ("draft", "TP8", 8, 0.8, "4", 1, 1.0, 0.005),
        ("self", "TP8", 8, 0.8, "4", 1, 1.0, 0.004),
        ("draft", "TP8", 8, 0.8, "4", 64, 1.0, 0.008),     # no batch-64 baseline: left out
        ("none", "TP8", 8, None, None, 1, 2.0, 0.012),
        ("draft", "TP8", 8, 0.8, "auto", 1, 2.0, 0.008),
        ("none", "TP16", 16, None, None, 1, 1.0, 0.020),
        ("self", "TP16", 16, 0.6, "4", 1, 1.0, None),       # failed run: left out
    ])
    sp = spec.speedups(t).to_pylist()
    assert [(r["method"], r["batch"], r["latency_scale"]) for r in sp] == [("draft", 1, 1.0), ("self", 1, 1.0),
                                                                           ("draft", 1, 2.0)]
    assert sp[0]["speedup"] == pytest.approx(2.0) and sp[0]["base_speed_tok_s"] == pytest.approx(100.0)
    assert sp[1]["speedup"] == pytest.approx(2.5) and sp[1]["speed_tok_s"] == pytest.approx(250.0)
    assert sp[2]["speedup"] == pytest.approx(1.5) and sp[2]["num_tokens"] == "auto"
    assert sp[0]["tokens_per_pass"] is None
    x, y = spec.series(spec.speedups(t), "draft", "TP8", "latency_scale")
    assert x == [1.0] and y == pytest.approx([2.0]), "the auto point is off the gamma-4 latency line"
    x, y = spec.series(spec.speedups(t), "draft", "TP8", "latency_scale", num_tokens="auto")
    assert x == [2.0] and y == pytest.approx([1.5])
    assert spec.lookup(spec.speedups(t), "self", "TP8") == pytest.approx(2.5)
    with pytest.raises(KeyError):
        spec.lookup(spec.speedups(t), "self", "TP16")


def test_series_orders_gamma_with_auto_last():
    rows = [("none", "TP8", 8, None, None, 1, 1.0, 0.01)]
    rows += [("self", "TP8", 8, 0.8, g, 1, 1.0, 0.01 / s) for g, s in (("auto", 3.0), ("8", 2.9), ("2", 2.0))]
    x, y = spec.series(spec.speedups(_table(rows)), "self", "TP8", "num_tokens")
    assert x == ["2", "8", "auto"] and y == pytest.approx([2.0, 2.9, 3.0])
    with pytest.raises(ValueError):
        spec.series(spec.speedups(_table(rows)), "self", "TP8", "gamma")


def test_run_measures_from_hand_built_tables():
    requests = pa.table({"status": ["completed", "completed", "rejected"], "tpot_s": [0.01, 0.03, float("nan")],
                         "decode_passes": [10, 20, 0], "output_tokens": [31, 41, 5]})
    steps = pa.table({"prefill_tokens": [100, 0, 0], "duration_s": [1.0, 0.2, 0.2], "draft_s": [0.5, 0.05, 0.05],
                      "spec_proposed_tokens": [0, 80, 40], "spec_accepted_tokens": [0, 30, 18],
                      "batch_size": [2, 2, 1], "compute_s": [0.1, 0.0, 0.0], "memory_s": [0.5, 0.1, 0.1],
                      "network_s": [0.2, 0.05, 0.05], "fixed_s": [0.2, 0.05, 0.05]})
    m = spec.run_measures(requests, steps)
    assert m["speed_tok_s"] == pytest.approx(50.0)
    assert m["tokens_per_pass"] == pytest.approx(70 / 30)
    assert m["mean_gamma"] == pytest.approx(120 / 30)
    assert m["draft_share"] == pytest.approx(0.25)
    assert m["memory_per_token_s"] == pytest.approx(0.2 / 51)
    assert m["compute_per_token_s"] == 0.0


# ------------------------------------------------------------------ the quick run (executed by the notebook)

@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path_factory.mktemp("spec_nb")
    src = ROOT / "notebooks" / "speculative.ipynb"
    shutil.copy(src, work / src.name)
    old = os.environ.get("SIM_QUICK")
    os.environ["SIM_QUICK"] = "1"
    try:
        nb = nbformat.read(work / src.name, as_version=4)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(work)}}).execute()
    finally:
        if old is None:
            os.environ.pop("SIM_QUICK")
        else:
            os.environ["SIM_QUICK"] = old
    return work


@pytest.fixture(scope="module")
def quick(notebook_run):
    root = notebook_run / "runs" / "speculative" / "quick"
    table = pq.read_table(root / "speculative.parquet")
    return root, table, spec.speedups(table), pq.read_table(root / "speculative_analytic.parquet")


def test_notebook_runs_quick_and_writes_pngs(notebook_run):
    for png in ("speculative.png", "speculative_parts.png"):
        assert (notebook_run / png).stat().st_size > 10_000, png
    root = notebook_run / "runs" / "speculative" / "quick"
    for name in ("speculative.parquet", "speculative_speedups.parquet", "speculative_analytic.parquet"):
        assert (root / name).is_file(), name


def test_quick_run_writes_one_tidy_table(quick):
    root, table, sp, _ = quick
    assert table.num_rows == len(spec.points(quick=True))
    assert all(e is None for e in table.column("error").to_pylist())
    for col in spec.ID_COLUMNS + spec.RUN_COLUMNS + ("tpot_mean_s", "network.latency_scale", "workload.path"):
        assert col in table.column_names, col
    assert all(v > 0 for v in table.column("speed_tok_s").to_pylist())
    assert sp.num_rows == table.num_rows - sum(m == "none" for m in table.column("method").to_pylist())
    assert pq.read_table(root / "speculative_speedups.parquet").equals(sp)
    for r in table.to_pylist():
        assert r["requests_completed"] == r["requests"], r["job"]
        if r["method"] == "none":
            assert r["tokens_per_pass"] == 1.0 and r["draft_share"] == 0.0
        else:
            assert r["tokens_per_pass"] > 1.5 and r["draft_share"] > 0


def test_every_wave_decodes_at_its_batch_size(quick):
    root, table, _, _ = quick
    for r in table.select(["job", "batch", "waves"]).to_pylist():
        steps = pq.read_table(root / "jobs" / r["job"] / "steps.parquet").to_pydict()
        req = pq.read_table(root / "jobs" / r["job"] / "requests.parquet").to_pydict()
        assert max(req["finish_s"]) < r["waves"] * spec.WAVE_GAP_S and max(req["ttft_s"]) < spec.WAVE_GAP_S / 2
        prefill = [b for b, p in zip(steps["batch_size"], steps["prefill_tokens"]) if p > 0]
        assert prefill == [r["batch"]] * r["waves"], "each wave prefills in one step"
        at_batch = sum(1 for b, p in zip(steps["batch_size"], steps["prefill_tokens"]) if b == r["batch"] and p == 0)
        assert at_batch >= 0.7 * len(steps["batch_size"]), r


def test_speedup_shrinks_with_batch_for_the_8b_draft(quick):
    _, _, sp, _ = quick
    for dep in spec.DEPLOYMENTS:
        s1 = spec.lookup(sp, "draft", dep, batch=1)
        s64 = spec.lookup(sp, "draft", dep, batch=64)
        assert s1 > s64 > 1.0
    assert spec.lookup(sp, "draft", "TP8") >= 1.5, "physics.md §3: Epoch ~x1.6 for a 70B with an 8B draft"


def test_speedup_rises_with_acceptance(quick):
    _, _, sp, _ = quick
    for m in spec.METHODS:
        for dep in spec.DEPLOYMENTS:
            x, y = spec.series(sp, m, dep, "acceptance")
            assert x == sorted(spec.QUICK_SWEEPS["acceptance"])
            assert all(b > a * 1.1 for a, b in zip(y, y[1:])), (m, dep, y)


def test_draft_heads_gain_from_latency_but_the_8b_draft_does_not(quick):
    _, _, sp, _ = quick
    heads = {s: spec.lookup(sp, "self", "TP16", latency_scale=s) for s in (0.5, 2.0)}
    assert heads[2.0] > heads[0.5] > 2.0
    for dep in spec.DEPLOYMENTS:
        draft = {s: spec.lookup(sp, "draft", dep, latency_scale=s) for s in (0.5, 2.0)}
        assert draft[2.0] < draft[0.5], (dep, draft)
    assert spec.lookup(sp, "self", "TP8") > spec.lookup(sp, "draft", "TP8")


def test_draft_heads_are_cheap_and_the_8b_draft_is_not(quick):
    _, _, sp, _ = quick
    for dep in spec.DEPLOYMENTS:
        assert spec.lookup(sp, "draft", dep, column="draft_share") > 0.4
        assert spec.lookup(sp, "self", dep, column="draft_share") < 0.2
        assert spec.lookup(sp, "self", dep, column="mean_gamma", num_tokens="auto") > \
            spec.lookup(sp, "draft", dep, column="mean_gamma", num_tokens="auto")


def test_closed_form_agrees_with_the_simulation(quick):
    _, _, sp, an = quick
    for m in spec.METHODS:
        for dep in spec.DEPLOYMENTS:
            for factor in ("acceptance", "latency_scale"):
                ax, ay = spec.analytic_series(an, m, dep, factor)
                ana = dict(zip(ax, ay))
                for x, y in zip(*spec.series(sp, m, dep, factor)):
                    assert y == pytest.approx(ana[x], rel=0.05), (m, dep, factor, x)
            ax, ay = spec.analytic_series(an, m, dep, "batch")
            assert ay[0] > ay[-1], "closed form: shrinks with batch"


# ------------------------------------------------------------------ command line

_sim = run_sim


def test_cli_runs_the_representative_point(tmp_path):
    res = _sim("-m", "sim", "+experiment=speculative", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["model"] == "llama3_70b" and summary["config"]["tp"] == 8
    assert summary["requests"]["completed"] == 3
    steps = pq.read_table(tmp_path / "run" / "steps.parquet").to_pydict()
    assert set(steps["batch_size"]) == {1} and sum(steps["spec_proposed_tokens"]) > 0
    req = pq.read_table(tmp_path / "run" / "requests.parquet").to_pydict()
    assert min(req["tokens_per_pass"]) > 2.5


def test_cli_multirun_sweeps_methods_and_acceptance(tmp_path):
    table = sweep_experiment("speculative", tmp_path / "sweep")
    assert table.num_rows == 9 and all(e is None for e in table.column("error").to_pylist())
    tpot = {(r["speculative"], r["speculative.acceptance"]): r["tpot_mean_s"]
            for r in table.select(["speculative", "speculative.acceptance", "tpot_mean_s"]).to_pylist()}
    assert tpot[("none", 0.6)] == tpot[("none", 0.95)], "acceptance does nothing without speculation"
    assert tpot[("none", 0.8)] > tpot[("draft", 0.8)] > tpot[("self", 0.8)]
    assert tpot[("draft", 0.6)] > tpot[("draft", 0.8)] > tpot[("draft", 0.95)]
