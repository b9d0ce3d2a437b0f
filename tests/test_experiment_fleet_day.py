"""Headline experiment ``fleet_day`` (issue 15): a day of demand on fixed, autoscaled and N+1 fleets.

Rules, on the quick run (the bundled hour's first 2,000 requests twice: the day's first ~30
minutes, on Llama-3-70B TP4 replicas):

* every run completes every request (no faults: none failed; with faults: completed + failed
  + rejected = total) and the tables are written;
* a fixed fleet's cost is its GPUs for the makespan; an autoscaled fleet pays only for the
  GPU-hours it kept alive, which never exceed its largest fleet's;
* N+1 keeps at least one replica more alive on average than N, and costs more;
* attainment is the stated fraction and grows with the TTFT target; the SLO-level table names
  the cheapest fixed fleet meeting each level, if any;
* the notebook runs top to bottom with ``SIM_QUICK=1`` and writes its figure; the CLI runs a point.
"""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from helpers import execute_notebook, run_sim

from sim.experiments import fleet_day


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet_day")
    return root, fleet_day.run(root, quick=True)


def test_every_run_accounts_for_every_request(quick):
    root, tables = quick
    rows = tables["runs"].to_pylist()
    assert len(rows) == len(fleet_day.points(True))
    for r in rows:
        assert r["requests"] == 2 * fleet_day.QUICK_REQUESTS
        assert r["completed"] + r["failed"] <= r["requests"]
        if r["faults_rate_scale"] == 0:
            assert r["completed"] == r["requests"] and r["faults"] == 0
    assert pq.read_table(root / "fleet_day_runs.parquet").equals(tables["runs"])


def test_autoscaled_fleets_pay_for_what_they_keep_alive(quick):
    rows = quick[1]["runs"].to_pylist()
    price = 2.69 * 4                    # H100 spot $/GPU-hour x a TP4 replica's GPUs
    for r in rows:
        hours_alive = r["gpu_hours"] / 4
        assert r["usd_per_day"] * r["gpu_hours"] > 0
        if r["deployment"].startswith("fixed"):
            assert r["mean_replicas"] == r["max_replicas"]
            assert r["usd_per_day"] == pytest.approx(r["max_replicas"] * price * 24, rel=1e-9)
        else:
            assert 1.0 <= r["mean_replicas"] <= fleet_day.MAX_REPLICAS
            assert hours_alive <= fleet_day.MAX_REPLICAS * 24
    n = next(r for r in rows if r["deployment"] == "autoscaled (slo)" and r["faults_rate_scale"] == 0)
    n1 = next(r for r in rows if r["deployment"] == "autoscaled (slo) N+1" and r["faults_rate_scale"] == 0)
    assert {r["deployment"] for r in rows} >= set(fleet_day.AUTOSCALED)
    assert n1["mean_replicas"] >= n["mean_replicas"] and n1["usd_per_day"] >= n["usd_per_day"]


def test_attainment_and_slo_levels(quick):
    tables = quick[1]
    for r in tables["runs"].to_pylist():
        a = [r[f"attainment_ttft_{level:g}s"] for level in fleet_day.SLO_LEVELS]
        assert a == sorted(a) and 0.0 <= a[0] and a[-1] <= 1.0
        assert r["attainment"] == r[f"attainment_ttft_{fleet_day.SLO_TTFT_S:g}s"]
    runs = tables["runs"].to_pylist()
    for e in tables["slo_levels"].to_pylist():
        fixed = [r for r in runs if r["deployment"].startswith("fixed") and r["faults_rate_scale"] == e["faults_rate_scale"]
                 and r[f"attainment_ttft_{e['slo_ttft_s']:g}s"] >= fleet_day.ATTAINMENT]
        if fixed:
            assert e["fixed_replicas"] == min(r["max_replicas"] for r in fixed)
        else:
            assert e["fixed_replicas"] is None


def test_notebook_runs_quick(tmp_path, monkeypatch):
    execute_notebook("fleet_day", tmp_path, monkeypatch)
    assert (tmp_path / "fleet_day.png").stat().st_size > 10_000


def test_cli_runs_a_point(tmp_path):
    res = run_sim("-m", "sim", "+experiment=fleet_day", "parallel.dp=2", "workload.max_requests=300",
                  "workload.repeat=1", f"hydra.run.dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "summary.json").exists()


def test_hourly_replicas_time_averages_the_alive_count(tmp_path):
    import pyarrow as pa
    path = tmp_path / "replicas.parquet"
    pq.write_table(pa.table({"time_s": [0.0, 1800.0, 5400.0], "alive": [1, 3, 2]}), path)
    out = fleet_day.hourly_replicas(path, hours=3)
    assert out.tolist() == pytest.approx([2.0, 2.5, 2.0])


def test_bands_over_calibration_and_traffic_draws(quick):
    """The headline comparison again over draws of the calibration's parameters and the traffic:
    each deployment's cost and attainment as 10th / 50th / 90th percentiles, and the paired saving."""
    root, tables = quick
    rows = tables["bands"].to_pylist()
    labels = {r["deployment"] for r in rows}
    assert labels == {"fixed 2", "autoscaled (slo)", "autoscaled (slo) vs fixed 2"}
    for r in rows:
        assert r["draws"] == 2
        if r["low"] is not None:
            assert r["low"] <= r["median"] <= r["high"]
    cost = {r["deployment"]: r for r in rows if r["metric"] == "usd_per_day"}
    assert cost["fixed 2"]["low"] > 0 and cost["autoscaled (slo)"]["low"] > 0
    saving = next(r for r in rows if r["metric"] == "saving")
    assert saving["low"] <= saving["high"] < 1.0          # 1 - autoscaled / fixed cost of the same draw
    meets = [r for r in rows if r["metric"] == "meets_5s_fraction"]
    assert len(meets) == 2 and all(0.0 <= r["median"] <= 1.0 for r in meets)
    assert pq.read_table(root / "fleet_day_bands.parquet").equals(tables["bands"])
    # the draws moved the engine: the two fixed-fleet draws are different simulations
    from sim.experiments.fleet_day import band_points
    pts = [p for label, _, p in band_points(True) if label == "fixed 2"]
    assert pts[0]["engine.hbm_efficiency"] != pts[1]["engine.hbm_efficiency"] and pts[0]["seed"] != pts[1]["seed"]
