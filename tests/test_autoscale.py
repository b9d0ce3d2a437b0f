"""Autoscaling (``autoscale=queue|utilization|slo``; issue 15).

* The policy is Kubernetes HPA's: ceil(serving x metric / target), nothing within the
  tolerance, scale-down to the highest recommendation of the stabilization window, clamped to
  [min, max], N+k headroom on top; the slo policy grows in proportion and shrinks one replica
  per calm window.
* A step in demand is followed: replicas start at the first evaluation that sees it and serve
  exactly their spin-up (weights over the load bandwidth, plus warm-up) later; when demand
  falls they drain (no new requests, off once empty) after the stabilization window.
* Cost counts the GPU-seconds alive, so an autoscaled fleet that sheds replicas costs less
  than the fixed fleet; no request is lost or duplicated, with faults as well.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.cost.spinup import SpinupConfig, spinup_s
from sim.errors import ConfigError
from sim.policy.autoscale import AutoscaleConfig, Observation, Scaler


def _obs(serving=4, starting=0, requests=0, busy=0.0, ttft=None):
    return Observation(serving, starting, requests, busy, ttft)


def test_the_policy_is_hpas_ratio_with_tolerance_stabilization_clamps_and_headroom():
    cfg = AutoscaleConfig(policy="queue", target_requests_per_replica=10, min_replicas=2, scale_down_delay_s=300)
    s = Scaler(cfg, max_replicas=16)
    assert s.desired(_obs(4, requests=40), 0.0) == 4            # exactly on target
    assert s.desired(_obs(4, requests=43), 15.0) == 4           # within the 10 % tolerance
    assert s.desired(_obs(4, requests=90), 30.0) == 9           # ceil(4 x 90/40)
    assert s.desired(_obs(9, requests=10), 45.0) == 9           # a dip: the window remembers 9
    assert s.desired(_obs(9, requests=10), 331.0) == 2          # 300 s later: ceil(1) clamped to min 2
    assert s.desired(_obs(2, requests=1000), 345.0) == 16       # clamped to max
    h = Scaler(AutoscaleConfig(policy="queue", target_requests_per_replica=10, headroom=2), max_replicas=16)
    assert h.desired(_obs(6, requests=40), 0.0) == 6            # 4 needed + 2 kept
    assert h.desired(_obs(6, requests=80), 15.0) == 10          # the load over the 6 serving: 8 + 2
    u = Scaler(AutoscaleConfig(policy="utilization", target_utilization=0.5), max_replicas=8)
    assert u.desired(_obs(2, busy=1.0), 0.0) == 4


def test_the_slo_policy_grows_in_proportion_and_shrinks_one_replica_per_calm_window():
    cfg = AutoscaleConfig(policy="slo", slo_ttft_s=1.0, scale_down_delay_s=60)
    s = Scaler(cfg, max_replicas=10)
    assert s.desired(_obs(2, requests=5, ttft=3.0), 0.0) == 6
    assert s.desired(_obs(6, requests=5, ttft=0.7), 15.0) == 6  # under target, not calm enough
    n, seen = 6, []
    for t in np.arange(30.0, 300.0, 15.0):                     # calm from 30 s, evaluated every 15 s
        n = s.desired(_obs(n, requests=5, ttft=0.2), float(t))
        seen.append((float(t), n))
    assert dict(seen)[75.0] == 6 and dict(seen)[90.0] == 5     # one calm window (60 s) after 30 s
    assert dict(seen)[150.0] == 4 and dict(seen)[210.0] == 3   # then one replica per further window


def _run(tmp_path, name, *extra, requests=7200):
    out = tmp_path / name
    summary = run(compose_config(["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "parallel.dp=8",
                                  f"workload.max_requests={requests}", "workload.rate_per_s=2",
                                  f"workload.rate_profile={tmp_path / 'step.csv'}", "output.progress=never", *extra]), out)
    return summary, pq.read_table(out / "replicas.parquet").to_pylist() if (out / "replicas.parquet").exists() else []


@pytest.fixture
def step_profile(tmp_path):
    """2/s for 1,000 s, then 8/s for 500 s, then 2/s again (7,200 requests: to ~2,100 s)."""
    (tmp_path / "step.csv").write_text("time_s,multiplier\n0,1\n1000,1\n1000,4\n1500,4\n1500,1\n4000,1\n")
    return tmp_path


def test_autoscaling_follows_a_step_in_demand_after_its_spin_up_delay(step_profile):
    tmp_path = step_profile
    summary, rows = _run(tmp_path, "queue", "autoscale=queue", "autoscale.target_requests_per_replica=8",
                         "spinup.warmup_s=40")
    spin = spinup_s(summary["memory"]["weights_GB_per_gpu"], SpinupConfig(warmup_s=40.0))
    ups = [r for r in rows if r["reason"] == "scale_up"]
    assert ups and all(r["time_s"] % 15.0 == pytest.approx(0.0, abs=1e-6) for r in ups)   # at evaluations
    assert 1000.0 < ups[0]["time_s"] <= 1000.0 + 4 * 15.0          # the step is seen within a few evaluations
    for r in ups:
        served = [s for s in rows if s["replica"] == r["replica"] and s["reason"] == "spun_up" and s["time_s"] >= r["time_s"]]
        assert served and served[0]["time_s"] == pytest.approx(r["time_s"] + spin, rel=1e-12)
    assert not [r for r in rows if r["reason"] == "scale_up" and r["time_s"] < 1000.0]
    downs = [r for r in rows if r["reason"] == "scale_down"]
    assert downs and min(r["time_s"] for r in downs) > 1500.0         # only once the step is over,
    for d in downs:                                                    # and a window after the last scale-up
        assert d["time_s"] >= max(u["time_s"] for u in ups if u["time_s"] < d["time_s"]) + 300.0 - 1e-6
    drained = [r for r in rows if r["reason"] == "drained"]
    assert drained and all(any(d["replica"] == r["replica"] and d["time_s"] <= r["time_s"] for d in downs) for r in drained)
    req = summary["requests"]
    assert req["completed"] == req["total"] == 7200
    # cost counts only what was alive: the replicas' own intervals, from the rows
    assert summary["replicas"]["peak_alive"] > 1 and summary["replicas"]["scale_ups"] == len(ups)
    fixed, _ = _run(tmp_path, "fixed")
    assert summary["cost"]["gpu_hours_paid"] < 0.6 * fixed["cost"]["gpus"] * fixed["throughput"]["makespan_s"] / 3600
    assert summary["cost"]["usd_per_million_output_tokens"] < fixed["cost"]["usd_per_million_output_tokens"]


def test_alive_gpu_hours_are_the_sum_of_the_replicas_lifetimes(step_profile):
    summary, rows = _run(step_profile, "util", "autoscale=utilization", "autoscale.target_utilization=0.5")
    end = summary["sim"]["sim_time_s"]
    alive, since = 0.0, {}
    for r in rows:
        if r["state"] == "off" and r["replica"] in since:
            alive += r["time_s"] - since.pop(r["replica"])
        elif r["state"] != "off" and r["replica"] not in since:
            since[r["replica"]] = r["time_s"]
    alive += sum(end - t for t in since.values())
    assert summary["replicas"]["replica_hours"] == pytest.approx(alive / 3600.0, rel=1e-12)
    assert summary["requests"]["completed"] == 7200


def test_autoscaling_with_faults_and_headroom_loses_no_request(step_profile):
    summary, rows = _run(step_profile, "both", "autoscale=slo", "autoscale.slo_ttft_s=0.5", "autoscale.headroom=1",
                         "faults=mtbf", "faults.rate_scale=3e5", "spinup.warmup_s=10", "debug.check_invariants=true")
    req = summary["requests"]
    assert req["completed"] + req["rejected"] + req["failed"] == req["total"] == 7200
    assert summary["faults"]["count"] > 0
    assert {r["state"] for r in rows} >= {"serving", "down"}
    assert all(r["alive"] >= 2 or r["reason"] in ("fault", "initial") or r["time_s"] == 0 for r in rows if r["state"] != "down")


@pytest.mark.parametrize("overrides, message", [
    (["autoscale=queue", "autoscale.policy=sometimes"], "autoscale.policy"),
    (["autoscale=queue", "autoscale.min_replicas=9", "parallel.dp=8"], "autoscale.min_replicas=9 exceeds"),
    (["autoscale=queue", "autoscale.max_replicas=2", "autoscale.min_replicas=3"], "autoscale.max_replicas=2"),
    (["autoscale=queue", "autoscale.target_utilization=1.5"], "autoscale.target_utilization"),
    (["autoscale=queue", "fleet=[{hardware: h100, replicas: 2, tp: 4}]"], "autoscale with a mixed fleet"),
])
def test_bad_autoscale_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(compose_config(overrides))
    assert "\n" not in str(err.value)


def test_max_replicas_builds_the_fleet_at_its_largest():
    cfg = parse_config(compose_config(["autoscale=queue", "autoscale.max_replicas=4", "model=llama3_8b", "parallel.tp=2"]))
    assert cfg.parallel.dp == 4 and cfg.gpus == 8
    assert math.isclose(spinup_s(16.0, SpinupConfig()), 16.0 / 0.889 + 64.0)


def _cluster(*overrides):
    from sim.build import build_cluster, build_simulation, load_workload
    cfg = parse_config(compose_config(["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "parallel.dp=4",
                                       "output.progress=never", *overrides]))
    return build_simulation(cfg, build_cluster(cfg), load_workload(cfg))


def test_a_replica_started_again_serves_a_whole_spin_up_after_its_latest_start():
    from sim.des.simulation import simulate
    cluster = _cluster("autoscale=queue", "autoscale.interval_s=1e6", "workload.max_requests=50", "workload.rate_per_s=0.2")
    scaler, env = cluster.scaler, cluster.env

    def script():
        yield env.timeout(10.0)
        scaler._start(1)
        yield env.timeout(10.0)
        scaler._drain(1)                # the starting replica is let go
        yield env.timeout(10.0)
        scaler._start(1)                # and started again at 30 s
    env.process(script())
    simulate(cluster)
    rows = cluster.lifecycle.rows
    served = [r for r in rows if r[1] == 1 and r[3] == "spun_up"]
    assert len(served) == 1 and served[0][0] == pytest.approx(30.0 + scaler.spinup_s[1], rel=1e-12)


def test_a_replica_turned_off_loses_its_prefix_cache():
    from sim.des.simulation import simulate
    cluster = _cluster("workload=mooncake_synthetic", "workload.max_requests=400", "scheduler.prefix_caching=true",
                       "parallel.router=prefix_aware", "autoscale=queue", "autoscale.target_requests_per_replica=1",
                       "autoscale.scale_down_delay_s=30", "autoscale.interval_s=5", "spinup.warmup_s=1",
                       "workload.rate_scale=0.3")
    simulate(cluster)
    log = cluster.lifecycle
    assert any(r[3] == "drained" for r in log.rows)
    for k, state in enumerate(log.state):
        if state == "off":
            pool = cluster.replicas[k].batcher.pool
            assert pool.cached_units == 0 and pool.free_blocks == pool.total_blocks


@pytest.mark.parametrize("policy", ["utilization", "queue"])
def test_autoscaling_decides_the_same_with_and_without_fast_forward(step_profile, policy):
    a, rows_a = _run(step_profile, f"{policy}_ff", f"autoscale={policy}", "autoscale.target_utilization=0.5",
                     "autoscale.target_requests_per_replica=8", "sim.fast_forward=true", requests=3000)
    b, rows_b = _run(step_profile, f"{policy}_step", f"autoscale={policy}", "autoscale.target_utilization=0.5",
                     "autoscale.target_requests_per_replica=8", "sim.fast_forward=false", requests=3000)
    assert any(r["reason"] == "scale_up" for r in rows_a)
    assert [(r["replica"], r["state"], r["reason"]) for r in rows_a] == [(r["replica"], r["state"], r["reason"]) for r in rows_b]
    assert [r["time_s"] for r in rows_a] == pytest.approx([r["time_s"] for r in rows_b], rel=1e-9)


def test_availability_counts_only_the_gpu_time_replicas_were_running(step_profile):
    summary, _ = _run(step_profile, "avail", "autoscale=queue", "autoscale.target_requests_per_replica=8",
                      "faults=mtbf", "faults.rate_scale=3e5")
    f = summary["faults"]
    assert f["count"] > 0
    assert f["availability"] == pytest.approx(1 - f["gpu_hours_lost"] / summary["replicas"]["gpu_hours"], rel=1e-9)


def test_a_stall_is_reported_even_while_the_autoscaler_keeps_evaluating():
    from unittest import mock

    from sim.des.simulation import StopRequest, simulate
    from sim.policy.batching import ContinuousBatcher
    cluster = _cluster("autoscale=queue", "workload.max_requests=20")
    with mock.patch.object(ContinuousBatcher, "plan", return_value=None):     # nothing can ever be scheduled
        with pytest.raises(ConfigError, match="simulation stalled"):
            simulate(cluster, StopRequest(max_wall_s=60))
