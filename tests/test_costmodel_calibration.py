"""Calibration against measured H100 step times (the cost model's acceptance test).

The data are a copy of ``shared/calibration/h100_pytorch_cudagraph.jsonl`` in
``tests/fixtures`` so that the suite does not depend on the shared folder.

Graph-mode rows (CUDA graph replays, median of 15-20) are tight: min and max are within a
few percent of the median. Eager rows are noisy: the host launches every kernel, and the
measured spread (max - min) is often 50-300% of the median (e.g. llama-3.2-1b B=64:
7.2 to 41.9 ms around 9.7 ms), so the eager profile is only held to 25% median error.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.config.parse import engine_from_mapping, load_engine, load_hardware
from sim.errors import ConfigError
from sim.spec.engine import EngineProfile
from sim.tools.calibration.engine_fit import (
    DOCUMENTED_DEFAULTS,
    FIT_BOUNDS,
    FIT_PARAMS,
    fit_engine,
    predict,
    read_measurements,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "h100_pytorch_cudagraph.jsonl"
SHARED = REPO.parent / "shared" / "calibration" / "h100_pytorch_cudagraph.jsonl"
MODELS = ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-14b")
H100 = load_hardware("h100")


@pytest.fixture(scope="module")
def rows():
    return read_measurements(FIXTURE)


def _step_rows(rows, mode):
    return [r for r in rows if r.kind in ("decode", "prefill") and r.mode == mode]


def _errors(rows, engine):
    return {r.label: predict(r, H100, engine) / r.measured_s - 1.0 for r in rows}


def test_fixture_is_a_copy_of_the_shared_file():
    if not SHARED.is_file():
        pytest.skip("shared calibration folder not present")
    assert FIXTURE.read_bytes() == SHARED.read_bytes()


def test_read_measurements_parses_all_row_kinds(rows):
    kinds = {}
    for r in rows:
        kinds[(r.kind, r.mode)] = kinds.get((r.kind, r.mode), 0) + 1
    assert kinds == {("gemm_sweep", "graph"): 16, ("decode", "graph"): 28, ("decode", "eager"): 6,
                     ("prefill", "graph"): 12}
    assert {r.dtype for r in rows if r.kind == "gemm_sweep"} == {"bf16", "fp8"}  # the two gemm_peak rows
    # rows skipped for memory (no "ms") are not measurements
    assert not any("B=256" in r.label and r.model.name == "qwen2.5-14b" for r in rows if r.kind == "decode")
    assert {r.model.name for r in rows if r.model} == set(MODELS)
    spec = next(r for r in rows if r.kind == "decode" and r.model.name == "llama-3.1-8b" and "T=4" in r.label
                and "B=16" in r.label)
    assert spec.batch.num_seqs == 16 and spec.batch.new_tokens == 64
    assert spec.batch.kv_tokens_read == 16 * (1024 + 4)


def test_inferred_models_match_file_params_and_kv(rows):
    raw = {json.loads(line)["model"]: json.loads(line) for line in FIXTURE.read_text().splitlines()
           if '"kind": "model"' in line}
    models = {r.model.name: r.model for r in rows if r.model}
    for name, r in raw.items():
        m = models[name]
        assert m.params == pytest.approx(r["params"], rel=1e-5)
        assert m.kv_bytes_per_token(2.0) == r["kv_bytes_per_token"]
        # the measured models count one vocab x hidden matrix (shared embedding / LM head)
        assert m.tie_word_embeddings is True


def test_graph_mode_acceptance(rows):
    """Every graph-mode decode and prefill row with the fitted pytorch_cudagraph profile."""
    engine = load_engine("pytorch_cudagraph")
    graph = _step_rows(rows, "graph")
    assert len(graph) == 40
    err = _errors(graph, engine)
    overall = float(np.median(np.abs(list(err.values()))))
    assert overall <= 0.10, overall
    for model in MODELS:
        per = [abs(e) for label, e in err.items() if label.startswith(model + " ")]
        assert len(per) >= 10
        assert float(np.median(per)) <= 0.10, (model, np.median(per))
    # no outlier either (worst row today is about 8%)
    worst = max(err.items(), key=lambda kv: abs(kv[1]))
    assert abs(worst[1]) <= 0.15, worst


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_graph_mode_acceptance_per_phase(rows, kind):
    engine = load_engine("pytorch_cudagraph")
    err = _errors([r for r in _step_rows(rows, "graph") if r.kind == kind], engine)
    assert float(np.median(np.abs(list(err.values())))) <= 0.10


def test_eager_mode_acceptance(rows):
    engine = load_engine("pytorch_eager")
    assert engine.cuda_graphs is False
    eager = _step_rows(rows, "eager")
    assert len(eager) == 6
    err = _errors(eager, engine)
    assert float(np.median(np.abs(list(err.values())))) <= 0.25
    # eager rows predicted with the graph profile would be far too fast: the host launch
    # bound is what the eager profile adds
    graph_err = _errors(eager, load_engine("pytorch_cudagraph"))
    assert float(np.median(list(graph_err.values()))) < -0.25


def test_eager_data_are_noisy_graph_data_are_not():
    raw = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    spread = {"graph": [], "eager": []}
    for r in raw:
        if r.get("kind") in ("decode", "prefill") and "ms" in r:
            spread[r["mode"]].append((r["max"] - r["min"]) / r["ms"])
    assert np.median(spread["graph"]) < 0.02
    assert np.median(spread["eager"]) > 0.2


def test_speculative_verify_rows_cost_little_more(rows):
    engine = load_engine("pytorch_cudagraph")
    t = {r.label: predict(r, H100, engine) for r in rows if r.kind == "decode" and r.mode == "graph"}
    t1 = t["llama-3.1-8b decode B=1 S=1024 T=1 graph"]
    t16 = t["llama-3.1-8b decode B=1 S=1024 T=16 graph"]
    assert t1 < t16 < 1.2 * t1


def test_gemm_sweep_roofline(rows):
    engine = load_engine("pytorch_cudagraph")
    gemm = [r for r in rows if r.kind == "gemm_sweep"]
    err = _errors(gemm, engine)
    assert float(np.median(np.abs(list(err.values())))) <= 0.10
    # flat from M=1 to M=128, then growing
    p = {r.mnk[0]: predict(r, H100, engine) for r in gemm}
    assert p[128] < 1.15 * p[1]
    assert p[1024] > 2.5 * p[1]


# --------------------------------------------------------------------------------- refit
@pytest.fixture(scope="module")
def refit(rows):
    return fit_engine(rows, H100, EngineProfile(**DOCUMENTED_DEFAULTS))


def test_refit_reproduces_data(refit):
    graph = [abs(r["error"]) for r in refit.rows if r["mode"] == "graph"]
    assert float(np.median(graph)) <= 0.10
    eager = [abs(r["error"]) for r in refit.rows if r["mode"] == "eager"]
    assert len(eager) == 6 and float(np.median(eager)) <= 0.25
    assert refit.median_abs_error <= 0.10


def test_refit_is_physically_meaningful(refit):
    e = refit.engine
    for f in ("hbm_efficiency", "compute_efficiency", "attention_compute_efficiency"):
        assert 0.0 < getattr(e, f) <= 1.0
    assert e.kernel_overhead_us > 0.0
    assert e.host_launch_us > 0.0
    assert e.roofline_sharpness >= 1.0
    for p, (lo, hi) in FIT_BOUNDS.items():
        assert lo <= getattr(e, p) <= hi
    # plausible values: HBM streaming 2.5-3.1 TB/s of 3.35, matmul 60-90% of peak,
    # eager launch slower than the 9.3 us/kernel microbenchmark is allowed, graph gaps 1-5 us
    assert 0.75 < e.hbm_efficiency < 0.93
    assert 0.6 < e.compute_efficiency < 0.9
    # the fp8 8192^3 matmul row: 1,460 of 1,979 TFLOP/s (a lower fraction than bf16's 790 of 989)
    assert 0.65 < e.low_precision_compute_efficiency < e.compute_efficiency
    assert 1.0 < e.kernel_overhead_us < 5.0


def test_default_fit_leaves_documented_parameters_alone(refit):
    assert not set(DOCUMENTED_DEFAULTS) & set(FIT_PARAMS)
    assert set(DOCUMENTED_DEFAULTS) <= set(FIT_BOUNDS)  # they can still be fitted on request
    for p, v in DOCUMENTED_DEFAULTS.items():
        assert getattr(refit.engine, p) == v


def test_refit_matches_committed_profile(refit):
    committed = load_engine("pytorch_cudagraph")
    for p in FIT_BOUNDS:  # fitted ones and the documented attention values
        if p == "step_overhead_us":
            assert abs(refit.engine.step_overhead_us - committed.step_overhead_us) < 1.0
        else:
            assert getattr(refit.engine, p) == pytest.approx(getattr(committed, p), rel=2e-3), p
    assert refit.engine.host_launch_us == pytest.approx(committed.host_launch_us, rel=2e-3)


def test_fit_only_changes_listed_params(rows):
    start = EngineProfile(kernels_per_layer=30.0, collective_software_us=9.0)
    res = fit_engine(rows, H100, start, params=("hbm_efficiency", "kernel_overhead_us"))
    for f in fields(EngineProfile):
        if f.name not in ("hbm_efficiency", "kernel_overhead_us", "host_launch_us"):
            assert getattr(res.engine, f.name) == getattr(start, f.name), f.name


# ------------------------------------------------------------------------ file errors
def test_read_measurements_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_measurements(tmp_path / "missing.jsonl")
    assert "no such file" in str(e.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "device"}\n{not json\n')
    with pytest.raises(ConfigError) as e:
        read_measurements(bad)
    assert "line 2" in str(e.value) and "\n" not in str(e.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(FIXTURE.read_text().splitlines()[20] + "\n")   # a model row only
    with pytest.raises(ConfigError) as e:
        read_measurements(empty)
    assert "no decode" in str(e.value)
    lacking = tmp_path / "lacking.jsonl"
    lacking.write_text('{"kind": "decode", "mode": "graph", "model": "x", "ms": 1.0}\n')
    with pytest.raises(ConfigError) as e:
        read_measurements(lacking)
    assert "line 1" in str(e.value)


# -------------------------------------------------------------------- calibrate CLI
def test_calibrate_cli_writes_loadable_profiles(tmp_path):
    out = tmp_path / "engine"
    proc = subprocess.run([sys.executable, "-m", "sim.calibrate", f"data={FIXTURE}", f"out={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rows"] == 62
    assert report["median_abs_error_graph"] <= 0.10
    assert report["median_abs_error_eager"] <= 0.25
    written = sorted(p.name for p in out.glob("*.yaml"))
    assert written == ["pytorch_cudagraph.yaml", "pytorch_eager.yaml"]
    engines = {}
    for name in written:
        data = OmegaConf.to_container(OmegaConf.load(out / name), resolve=True)
        engines[name] = engine_from_mapping(data)
    g, e = engines["pytorch_cudagraph.yaml"], engines["pytorch_eager.yaml"]
    assert g.name == "pytorch_cudagraph" and g.cuda_graphs is True
    assert e.name == "pytorch_eager" and e.cuda_graphs is False
    # both share the fitted kernels; only the graph flag differs
    from dataclasses import replace
    assert replace(e, name=g.name, cuda_graphs=True) == g
    # and they reproduce the data as well as the committed presets
    rows = read_measurements(FIXTURE)
    err = _errors(_step_rows(rows, "graph"), g)
    assert float(np.median(np.abs(list(err.values())))) <= 0.10


@pytest.mark.parametrize("args,needle", [([], "data=FILE is required"), (["data=/nonexistent.jsonl"], "no such file"),
                                         (["data=x", "bogus=1"], "unknown argument")])
def test_calibrate_cli_errors(tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "sim.calibrate", *args, f"out={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_calibrate_fit_choice(tmp_path):
    """``fit=all`` also fits the documented parameters (a lower in-sample error, not the
    default because they are not stable); ``fit=NAME`` fits only that; unknown names fail."""
    from sim.tools.calibration.cli import main as calibrate_main

    all_fit = calibrate_main([f"data={FIXTURE}", f"out={tmp_path / 'a'}", "fit=all"])
    default = calibrate_main([f"data={FIXTURE}", f"out={tmp_path / 'd'}"])
    assert all_fit["median_abs_error_graph"] < default["median_abs_error_graph"]
    one = calibrate_main([f"data={FIXTURE}", f"out={tmp_path / 'o'}", "fit=hbm_efficiency"])
    e = engine_from_mapping(OmegaConf.to_container(OmegaConf.load(tmp_path / "o" / "pytorch_cudagraph.yaml")))
    assert e.kernel_overhead_us == EngineProfile().kernel_overhead_us       # not fitted
    assert e.hbm_efficiency != EngineProfile().hbm_efficiency
    assert one["median_abs_error_graph"] > default["median_abs_error_graph"]
    proc = subprocess.run([sys.executable, "-m", "sim.calibrate", f"data={FIXTURE}", f"out={tmp_path}", "fit=nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "fit='nope'" in proc.stderr and "Traceback" not in proc.stderr
