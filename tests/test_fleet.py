"""Heterogeneous fleets: replicas of several hardware presets behind one router, priced as a mix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.build import build_cluster
from sim.config.compose import compose_config
from sim.config.parse import load_hardware, parse_config
from sim.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
BASE = ["workload=synthetic", "workload.max_requests=120", "workload.rate_per_s=6", "model=llama3_8b",
        "output.progress=never"]
MIX = "fleet=[{hardware: h100, replicas: 2, tp: 1}, {hardware: a100, replicas: 2, tp: 2}]"


def test_one_group_fleet_is_the_homogeneous_run(tmp_path):
    plain = run(compose_config(BASE + ["hardware=h100", "parallel.tp=2", "parallel.dp=2"]), tmp_path / "a")
    fleet = run(compose_config(BASE + ["fleet=[{hardware: h100, replicas: 2, tp: 2}]"]), tmp_path / "b")
    for k in ("ttft_s", "tpot_s", "throughput"):
        assert fleet[k] == plain[k]
    assert fleet["cost"]["usd_per_hour"] == pytest.approx(plain["cost"]["usd_per_hour"])


def test_mixed_fleet_runs_each_replica_on_its_hardware_and_prices_the_mix(tmp_path):
    s = run(compose_config(BASE + [MIX]), tmp_path)
    h100, a100 = load_hardware("h100"), load_hardware("a100")
    assert s["cost"]["gpus"] == 2 * 1 + 2 * 2
    assert s["cost"]["usd_per_hour"] == pytest.approx(2 * h100.usd_per_hour + 4 * a100.usd_per_hour)
    assert [g["hardware"] for g in s["cost"]["groups"]] == ["h100", "a100"]
    assert s["config"]["hardware"] == "2xh100+2xa100"
    assert (s["config"]["tp"], s["config"]["pp"], s["config"]["dp"]) == ([1, 2], [1, 1], [2, 2])  # per group
    assert s["requests"]["completed"] == 120
    plan = build_cluster(parse_config(compose_config(BASE + [MIX])))
    assert [r.predictor.hardware.name for r in plan.replicas] == ["h100", "h100", "a100", "a100"]
    assert [r.predictor.tp for r in plan.replicas] == [1, 1, 2, 2]
    gpus = [g for r in plan.replicas for stage in r.stage_gpus for g in stage]
    assert len(set(gpus)) == len(gpus) == 6             # no GPU serves two replicas
    steps = pq.read_table(tmp_path / "steps.parquet").to_pydict()
    served = set(steps["replica"])
    assert served == {0, 1, 2, 3}                        # the router uses every replica
    energy = s["cost"]["energy"]
    assert 0 < energy["gpu_utilization"] <= 1 and energy["joules_per_output_token"] > 0


def test_pcie_group_of_a_mixed_fleet_gets_no_one_shot_all_reduce():
    cfg = parse_config(compose_config(BASE + ["fleet=[{hardware: h100, replicas: 1, tp: 2}, "
                                              "{hardware: rtx4090, replicas: 1, tp: 2}]"]))
    plan = build_cluster(cfg)
    nv, pcie = (plan.fabric.group(r.stage_gpus[0]) for r in plan.replicas)
    assert nv.allreduce_algorithm(16384) == "oneshot"
    assert pcie.allreduce_algorithm(16384) == "ring"


@pytest.mark.parametrize("fleet,msg", [
    ("[{hardware: h100}]", "needs hardware and replicas"),
    ("[{hardware: h100, replicas: 0}]", r"fleet\[0\]\.replicas=0"),
    ("[{hardware: h100, replicas: 1, colour: 2}]", "unknown field"),
    ("[{hardware: h999, replicas: 1}]", "h999"),
])
def test_bad_fleets_are_one_line_errors(fleet, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_config(compose_config(BASE + [f"fleet={fleet}"]))


def test_fleet_on_the_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sim", *BASE, MIX, f"hydra.run.dir={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "summary.json").is_file()
