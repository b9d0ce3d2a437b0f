"""Bands from the calibration's parameter uncertainty and redrawn traffic (``sim/tools/uncertainty.py``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.config.compose import compose_config
from sim.errors import ConfigError
from sim.tools.calibration.engine_fit import FIT_BOUNDS, FIT_PARAMS, bootstrap_factors, fit_engine, read_measurements
from sim.tools.uncertainty import DRAWS_FILE, UncertaintyConfig, band, draw_bands, drawn_config, load_factors

REPO = Path(__file__).resolve().parent.parent
STEPS = REPO / "tests" / "fixtures" / "h100_pytorch_cudagraph.jsonl"   # a copy of shared/calibration's


def test_the_bundled_draws_are_a_bootstrap_around_the_fit():
    names, factors = load_factors()
    f = np.array(factors)
    assert names == FIT_PARAMS and f.shape == (40, len(FIT_PARAMS))
    assert np.all(f > 0)
    med = np.median(f, axis=0)
    assert np.all(np.abs(med - 1) < 0.03), med           # centred on the all-data fit
    spread = np.percentile(f, 90, axis=0) - np.percentile(f, 10, axis=0)
    assert np.all(spread > 0) and spread[FIT_PARAMS.index("hbm_efficiency")] < 0.05


def test_bootstrap_factors_reproduce_the_bundled_file(tmp_path):
    from sim.spec.engine import EngineProfile
    from sim.config.parse import load_hardware
    from sim.tools.calibration.engine_fit import DOCUMENTED_DEFAULTS

    start = EngineProfile(name="pytorch", allreduce_algorithm="ring", collective_software_us=12.0, **DOCUMENTED_DEFAULTS)
    rows = read_measurements(STEPS)
    names, factors = bootstrap_factors(rows, load_hardware("h100"), start, 3)
    bundled = load_factors()[1][:3]
    assert names == load_factors()[0]
    assert np.allclose(factors, bundled, rtol=2e-4)
    # a draw is a fit of real data: each factor times the all-data value stays within the bounds
    full = fit_engine([r for r in rows if r.mode == "graph"], load_hardware("h100"), start).engine
    for row in factors:
        for n, f in zip(names, row):
            lo, hi = FIT_BOUNDS[n]
            assert lo <= getattr(full, n) * f <= hi
    # the command writes the file the bands read (given elsewhere with draws_out=), not into conf/engine
    r = subprocess.run([sys.executable, "-m", "sim.calibrate", f"data={STEPS}", "uncertainty=2", f"out={tmp_path}",
                        f"draws_out={tmp_path / 'draws.yaml'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["written"][-1] == str(tmp_path / "draws.yaml")
    assert load_factors(tmp_path / "draws.yaml")[1] == load_factors()[1][:2]
    assert not any("draws" in p.name for p in (REPO / "conf" / "engine").iterdir())


def test_a_draw_moves_the_fitted_engine_parameters_and_the_traffic_seed():
    cfg = compose_config(["seed=5"])
    names, factors = load_factors()
    u = UncertaintyConfig(draws=3)
    d = drawn_config(cfg, 2, names, factors, u)
    for n, f in zip(names, factors[1]):
        lo, hi = FIT_BOUNDS[n]
        assert d["engine"][n] == pytest.approx(min(hi, max(lo, cfg["engine"][n] * f)))
    assert d["seed"] == 7 and d["workload"]["resample"] is True
    assert cfg["engine"] != d["engine"] and cfg["seed"] == 5          # the input is not touched
    fixed = drawn_config(cfg, 2, names, factors, UncertaintyConfig(draws=3, calibration=False))
    assert fixed["engine"] == cfg["engine"] and fixed["seed"] == 7
    still = drawn_config(cfg, 2, names, factors, UncertaintyConfig(draws=3, traffic=False))
    assert still["seed"] == 5 and not still["workload"].get("resample")
    assert drawn_config(cfg, 41, names, factors, u)["engine"] == drawn_config(cfg, 1, names, factors, u)["engine"]


def test_band_percentiles_and_fractions():
    assert band([1.0, 2.0, 3.0, 4.0, 5.0, None], 10, 90) == pytest.approx({"low": 1.4, "median": 3.0, "high": 4.6})
    assert band([None], 10, 90) == {"low": None, "median": None, "high": None}
    cfg = compose_config(["model=llama3_8b", "parallel.tp=1", "workload.max_requests=60"])
    from sim.app import evaluate

    def measure(c):
        s = evaluate({**c, "output": {**c["output"], "write_parquet": False, "progress": "never"}})[0]
        return {"tpot_p99_s": s["tpot_s"]["p99"], "fast": s["tpot_s"]["p99"] < 1.0}

    # calibration only: the same requests, different engines, so TPOT moves
    rows, bands = draw_bands(cfg, measure, UncertaintyConfig(draws=4, traffic=False))
    assert len(rows) == 4 and len({r["tpot_p99_s"] for r in rows}) > 1
    assert bands["fast_fraction"] == 1.0
    b = bands["tpot_p99_s"]
    assert b["low"] < b["high"] and b["low"] <= b["median"] <= b["high"]
    # traffic only: same engine, redrawn requests
    rows_t, _ = draw_bands(cfg, measure, UncertaintyConfig(draws=2, calibration=False))
    assert all("factor_hbm_efficiency" not in r for r in rows_t) and rows_t[0]["seed"] != rows_t[1]["seed"]


def test_bad_uncertainty_settings():
    for bad, field in (({"draws": -1}, "uncertainty.draws"), ({"low_percentile": 95}, "low_percentile"),
                       ({"colour": 1}, "unknown field"), ({"calibration": False, "traffic": False}, "nothing to draw")):
        with pytest.raises(ConfigError, match=field):
            UncertaintyConfig.from_map(bad)
    r = subprocess.run([sys.executable, "-m", "sim.procure", "uncertainty.draws=-3", "workload.max_requests=20"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "uncertainty.draws" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert DRAWS_FILE.is_file()
