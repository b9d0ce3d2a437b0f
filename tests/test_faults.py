"""Failures and stragglers (``faults=mtbf``; issue 15).

* Under any fault schedule no request is lost or duplicated: completed + rejected + failed =
  total, every request logged once (hypothesis over random schedules, both recovery modes,
  run-time invariants on);
* a straggler slows its lockstep group's local work by its factor, collectives and fixed
  costs unchanged, and only while it lasts;
* availability measured on a long run matches the closed form MTBF / (MTBF + downtime)
  within its renewal-reward confidence interval;
* the default MTBFs are the Llama 3 paper's counts; rates, sources and downtimes follow the
  fleet's shape (a scale-out link only for replicas spanning servers, a host for every
  replica on it); runs are reproducible for a seed; bad values are one line.
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.app import run
from sim.build import build_cluster, build_simulation, load_workload
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.cost.spinup import SpinupConfig, spinup_s
from sim.des.faults import FaultInjector
from sim.des.simulation import simulate
from sim.errors import ConfigError
from sim.policy.faults import (FaultConfig, FaultDraws, FaultSource, ScriptedFaults, availability, fault_sources,
                               llama3_mtbf_hours, replica_failure_rate_per_s)

_COMPOSED: dict[tuple[str, ...], dict] = {}


def _config(*overrides: str):
    """llama3_8b, TP1 x DP4 on one H100 node, a synthetic workload, invariants checked."""
    if overrides not in _COMPOSED:
        _COMPOSED[overrides] = compose_config(["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "parallel.dp=4",
                                               "output.progress=never", "debug.check_invariants=true", *overrides])
    return parse_config(copy.deepcopy(_COMPOSED[overrides]))


def _simulate(cfg, faults, recovery="restart", max_restarts=3, down_s=30.0, slowdown=2.0, straggle_s=600.0):
    plan = build_cluster(cfg)
    cluster = build_simulation(cfg, plan, load_workload(cfg))
    cluster.recovery, cluster.max_restarts = recovery, max_restarts
    stage_of = {g: (k, s) for k, rp in enumerate(plan.replicas) for s, stage in enumerate(rp.stage_gpus) for g in stage}
    cluster.faults = FaultInjector(cluster.env, cluster, ScriptedFaults(faults), [down_s] * len(plan.replicas),
                                   stage_of, slowdown, straggle_s)
    return simulate(cluster)


def _gpu_fault(replica: int) -> FaultSource:
    return FaultSource("gpu", f"gpu{replica}", 0.0, (replica,))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.lists(st.tuples(st.floats(0.0, 40.0), st.sets(st.integers(0, 3), min_size=1, max_size=4)),
                      min_size=1, max_size=8),
       recovery=st.sampled_from(["restart", "fail"]), max_restarts=st.integers(0, 2),
       down_s=st.floats(0.5, 20.0))
def test_no_request_is_lost_or_duplicated_under_any_fault_schedule(times, recovery, max_restarts, down_s):
    cfg = _config("workload.max_requests=150", "workload.rate_per_s=8.0")
    faults = [(t, FaultSource("host", "x", 0.0, tuple(sorted(ks)))) for t, ks in times]
    result = _simulate(cfg, faults, recovery, max_restarts, down_s)
    table = result.requests
    status = Counter(table.column("status").to_pylist())
    assert status["completed"] + status["rejected"] + status["failed"] == 150 == table.num_rows
    assert status["unfinished"] == 0
    assert table.column("request_id").to_pylist() == list(range(150))
    log = result.faults
    assert log is not None and log.failed == status["failed"]
    restarts = np.array(table.column("restarts").to_pylist())
    assert restarts.max(initial=0) <= (max_restarts if recovery == "restart" else 0)
    assert int(restarts.sum()) == log.restarted
    done = table.filter(table.column("status").to_pylist() == np.array("completed"))
    assert np.all(np.array(done.column("finish_s").to_pylist()) >= np.array(done.column("arrival_s").to_pylist()))


def test_a_fault_restarts_in_flight_requests_elsewhere_and_they_finish_with_their_tokens():
    cfg = _config("workload.max_requests=200", "workload.rate_per_s=20.0")
    result = _simulate(cfg, [(3.0, _gpu_fault(0))], down_s=1e6)
    table = result.requests
    assert result.faults is not None and result.faults.restarted > 0
    assert set(table.column("status").to_pylist()) == {"completed"}
    restarted = [r for r in table.to_pylist() if r["restarts"]]
    assert len(restarted) == result.faults.restarted
    assert all(r["replica"] != 0 for r in restarted)           # recomputed on a replica that is up
    late = [r for r in table.to_pylist() if r["arrival_s"] > 3.0]
    assert late and all(r["replica"] != 0 for r in late)       # the router never picks a replica that is down


def test_recovery_fail_fails_exactly_the_requests_in_flight():
    cfg = _config("workload.max_requests=200", "workload.rate_per_s=20.0")
    result = _simulate(cfg, [(3.0, _gpu_fault(1))], recovery="fail", down_s=5.0)
    status = Counter(result.requests.column("status").to_pylist())
    assert result.faults is not None
    assert status["failed"] == result.faults.failed > 0 and result.faults.restarted == 0
    assert status["completed"] == 200 - status["failed"]


def test_every_replica_down_holds_arrivals_until_one_returns():
    cfg = _config("workload.max_requests=100", "workload.rate_per_s=20.0")
    result = _simulate(cfg, [(1.0, FaultSource("host", "server0", 0.0, (0, 1, 2, 3)))], down_s=10.0)
    rows = result.requests.to_pylist()
    assert {r["status"] for r in rows} == {"completed"}
    held = [r for r in rows if 1.0 < r["arrival_s"] < 11.0]
    assert held and all(r["first_token_s"] > 11.0 for r in held)


def test_a_straggler_slows_its_groups_local_work_by_its_factor_while_it_lasts():
    one = _config("workload.max_requests=1", "workload.prompt_tokens=512", "workload.output_tokens=400",
                  "parallel.dp=1", "parallel.tp=2", "sim.fast_forward=true")
    base = _simulate(one, [])
    slow = _simulate(one, [(0.0, FaultSource("straggler", "gpu1", 0.0, (0,)))], slowdown=3.0, straggle_s=1.0)
    assert base.steps == slow.steps
    b, s = base.step_sums, slow.step_sums
    # the whole run is inside or outside the window: split the slowed run's steps at 1 s
    assert s["network_s"] == pytest.approx(b["network_s"], rel=1e-12)
    assert s["fixed_s"] == pytest.approx(b["fixed_s"], rel=1e-12)
    assert s["compute_s"] > b["compute_s"] and s["memory_s"] > b["memory_s"]
    assert s["duration_s"] - b["duration_s"] == pytest.approx(
        (s["compute_s"] - b["compute_s"]) + (s["memory_s"] - b["memory_s"]), rel=1e-9)


def test_a_straggler_factor_applies_step_by_step(tmp_path):
    """Steps that start inside the straggle take (f - 1) x their arithmetic and memory time more;
    steps after it are the baseline's again (one request: the same batches in both runs)."""
    one = _config("workload.max_requests=1", "workload.prompt_tokens=256", "workload.output_tokens=300",
                  "parallel.dp=1", "parallel.tp=2", "sim.fast_forward=false")
    plan = build_cluster(one)

    def steps(faults):
        from sim.observe import schemas
        from sim.observe.recorder import ColumnRecorder
        cluster = build_simulation(one, plan, load_workload(one), steps_path=None)
        cluster.steps = ColumnRecorder(schemas.STEPS, tmp_path / f"s{len(faults)}.parquet")
        stage_of = {"gpu0": (0, 0), "gpu1": (0, 0)}
        cluster.faults = FaultInjector(cluster.env, cluster, ScriptedFaults(faults), [1.0], stage_of, 2.5, 0.5)
        simulate(cluster)
        return pq.read_table(tmp_path / f"s{len(faults)}.parquet").to_pylist()

    base = steps([])
    slow = steps([(0.2, FaultSource("straggler", "gpu1", 0.0, (0,)))])
    assert len(base) == len(slow)
    inside = [(b, s) for b, s in zip(base, slow) if 0.2 < s["start_s"] and s["start_s"] + s["duration_s"] < 0.7]
    after = [(b, s) for b, s in zip(base, slow) if s["start_s"] > 0.75]
    assert len(inside) > 10 and len(after) > 10
    for b, s in inside:
        assert s["compute_s"] == pytest.approx(2.5 * b["compute_s"], rel=1e-12)
        assert s["memory_s"] == pytest.approx(2.5 * b["memory_s"], rel=1e-12)
        assert s["network_s"] == pytest.approx(b["network_s"], rel=1e-12)
        assert s["duration_s"] == pytest.approx(b["duration_s"] + 1.5 * (b["compute_s"] + b["memory_s"]), rel=1e-9)
    for b, s in after:
        assert s["duration_s"] == pytest.approx(b["duration_s"], rel=1e-12)


def test_availability_matches_the_closed_form_on_a_long_run():
    """8 independent single-GPU replicas, GPU failures only (MTBF 2,000 s after rate_scale),
    downtime d = detect 30 s + spin-up: A = MTBF / (MTBF + d). Renewal-reward CLT: the
    estimate's standard error is (1 - A) MTBF / sqrt(n) / (MTBF + d) per replica, n cycles."""
    f = FaultConfig(kind="mtbf", gpu_mtbf_hours=2000.0 / 3600.0, detect_s=30.0)
    cfg = _config("workload.max_requests=400", "workload.rate_per_s=0.0005", "parallel.dp=8")
    cfg = type(cfg)(**{**cfg.__dict__, "faults": f, "debug": type(cfg.debug)(check_invariants=False)})
    summary, result = _evaluate(cfg)
    faults = summary["faults"]
    d = 30.0 + spinup_s(summary["memory"]["weights_GB_per_gpu"], SpinupConfig())
    mtbf = 2000.0
    expected = mtbf / (mtbf + d)
    assert faults["availability_expected"] == pytest.approx(expected, rel=1e-12)
    span = result.sim_time_s
    n = 8 * span / (mtbf + d)
    se = (1 - expected) * mtbf / (mtbf + d) / math.sqrt(n)
    assert n > 1000 and faults["count"] > 1000
    assert abs(faults["availability"] - expected) < 4 * se, (faults, expected, se)
    assert summary["requests"]["completed"] + summary["requests"]["failed"] == 400


def _evaluate(cfg):
    from sim.app import evaluate
    from unittest import mock
    with mock.patch("sim.app.parse_config", return_value=cfg):
        return evaluate({})


def test_default_mtbfs_are_the_llama3_counts_and_sources_follow_the_fleet():
    assert llama3_mtbf_hours("gpu") == pytest.approx(16384 * 1296 / 268)
    assert llama3_mtbf_hours("link") == pytest.approx(16384 * 1296 / 42)
    assert llama3_mtbf_hours("host") == pytest.approx(2048 * 1296 / 46)
    preset = _config()
    mtbf = parse_config({**compose_config(["faults=mtbf"])}).faults
    assert mtbf.gpu_mtbf_hours == pytest.approx(llama3_mtbf_hours("gpu"), rel=1e-5)
    assert mtbf.link_mtbf_hours == pytest.approx(llama3_mtbf_hours("link"), rel=1e-5)
    assert mtbf.host_mtbf_hours == pytest.approx(llama3_mtbf_hours("host"), rel=1e-5)
    assert not preset.faults.enabled
    # two replicas inside server 0, one spanning servers 0 and 1
    gpus = [["gpu0", "gpu1"], ["gpu2", "gpu3"], ["gpu6", "gpu7", "gpu8", "gpu9"]]
    server = {g: (0 if int(g[3:]) < 8 else 1) for rep in gpus for g in rep}
    sources = fault_sources(mtbf, gpus, server)
    links = [s for s in sources if s.kind == "link"]
    assert {s.replicas for s in links} == {(2,)} and len(links) == 4
    hosts = {s.component: s.replicas for s in sources if s.kind == "host"}
    assert hosts == {"server0": (0, 1, 2), "server1": (2,)}
    hour = 3600.0
    assert replica_failure_rate_per_s(sources, 0) == pytest.approx(
        (2 / mtbf.gpu_mtbf_hours + 1 / mtbf.host_mtbf_hours) / hour)
    assert replica_failure_rate_per_s(sources, 2) == pytest.approx(
        (4 / mtbf.gpu_mtbf_hours + 4 / mtbf.link_mtbf_hours + 2 / mtbf.host_mtbf_hours) / hour)
    assert availability(0.0, 100.0) == 1.0
    assert availability(1 / 900.0, 100.0) == pytest.approx(0.9)
    # the superposition draws each source in proportion to its rate
    draws = FaultDraws([FaultSource("gpu", "a", 1.0, (0,)), FaultSource("gpu", "b", 3.0, (1,))],
                       np.random.default_rng(1))
    picks = Counter(draws.next()[1].component for _ in range(4000))   # type: ignore[index]
    assert abs(picks["b"] / 4000 - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)


def test_runs_with_faults_are_reproducible_and_write_faults_parquet(tmp_path):
    overrides = ["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "parallel.dp=4", "workload.max_requests=300",
                 "workload.rate_per_s=2.0", "faults=mtbf", "faults.rate_scale=1e6", "faults.straggler_mtbf_hours=0.05",
                 "output.progress=never"]
    a = run(compose_config(overrides), tmp_path / "a")
    b = run(compose_config(overrides), tmp_path / "b")
    ta, tb = pq.read_table(tmp_path / "a" / "faults.parquet"), pq.read_table(tmp_path / "b" / "faults.parquet")
    assert ta.equals(tb) and ta.num_rows > 0
    assert a["faults"] == b["faults"]
    rows = ta.to_pylist()
    assert a["faults"]["count"] == sum(r["kind"] != "straggler" for r in rows)
    assert a["faults"]["stragglers"] == sum(r["kind"] == "straggler" for r in rows)
    assert a["faults"]["requests_restarted"] == sum(r["requests_restarted"] for r in rows)
    assert all(r["end_s"] >= r["time_s"] for r in rows)
    req = a["requests"]
    assert req["completed"] + req["rejected"] + req["failed"] == req["total"] == 300
    other = run(compose_config(overrides + ["seed=1"]), tmp_path / "c")
    assert not pq.read_table(tmp_path / "c" / "faults.parquet").equals(ta)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["faults"] == a["faults"]
    assert other["requests"]["total"] == 300


@pytest.mark.parametrize("override, field", [
    ("faults.kind=sometimes", "faults.kind"), ("faults.gpu_mtbf_hours=-1", "faults.gpu_mtbf_hours"),
    ("faults.recovery=retry", "faults.recovery"), ("faults.straggler_slowdown=0.5", "faults.straggler_slowdown"),
    ("faults.detect_s=-3", "faults.detect_s"), ("spinup.load_GBps_per_gpu=0", "spinup.load_GBps_per_gpu"),
])
def test_bad_fault_settings_are_one_line_errors(override, field):
    key, value = override.split("=")
    cfg = compose_config(["faults=mtbf"])
    group, name = key.split(".")
    cfg[group][name] = value if not value.lstrip("-").replace(".", "").isdigit() else float(value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        parse_config(cfg)
    assert "\n" not in str(err.value)


def test_faults_with_disaggregated_pools_are_refused():
    cfg = parse_config(compose_config(["disagg=pools", "faults=mtbf", "model=llama3_8b", "workload=synthetic"]))
    with pytest.raises(ConfigError, match="faults=mtbf with disagg=pools is not built"):
        build_simulation(cfg, build_cluster(cfg), load_workload(cfg))


def test_a_fault_during_a_fast_forwarded_span_gives_what_stepping_gives():
    """The span's steps that ended before the fault happened (tokens, rows), as when stepping."""
    results = []
    for ff in ("true", "false"):
        cfg = _config("workload.max_requests=40", "workload.rate_per_s=20.0", "workload.prompt_tokens=256",
                      "workload.output_tokens=400", "parallel.dp=2", f"sim.fast_forward={ff}")
        results.append(_simulate(cfg, [(4.0, _gpu_fault(0))], down_s=5.0))
    a, b = (r.requests.to_pylist() for r in results)
    assert [r["status"] for r in a] == [r["status"] for r in b]
    assert [r["restarts"] for r in a] == [r["restarts"] for r in b] and sum(r["restarts"] for r in a) > 0
    assert [r["finish_s"] for r in a] == pytest.approx([r["finish_s"] for r in b], rel=1e-9)
    assert results[0].steps == results[1].steps


def test_a_degraded_link_reprices_the_collectives_at_the_higher_latency_while_it_lasts(tmp_path):
    """One request on a TP2 replica (the same batches in every run): steps that start inside the
    degradation have the network time of a run at 4x the per-message latency, the others the
    healthy run's; arithmetic and memory time are untouched."""
    from sim.observe import schemas
    from sim.observe.recorder import ColumnRecorder

    def steps(name, *extra, degrade=False):
        cfg = _config("workload.max_requests=1", "workload.prompt_tokens=256", "workload.output_tokens=300",
                      "parallel.dp=1", "parallel.tp=2", "sim.fast_forward=true", *extra)
        plan = build_cluster(cfg)
        cluster = build_simulation(cfg, plan, load_workload(cfg))
        cluster.steps = ColumnRecorder(schemas.STEPS, tmp_path / f"{name}.parquet")
        if degrade:
            cluster.faults = FaultInjector(cluster.env, cluster, ScriptedFaults(
                [(0.2, FaultSource("degraded_link", "gpu1", 0.0, (0,)))]), [1.0], {"gpu0": (0, 0), "gpu1": (0, 0)},
                2.0, 600.0, 0.5)
        simulate(cluster)
        return pq.read_table(tmp_path / f"{name}.parquet").to_pylist()

    healthy = steps("healthy")
    slow = steps("slow", "network.latency_scale=4.0")
    mixed = steps("mixed", "faults=mtbf", "faults.gpu_mtbf_hours=null", "faults.link_mtbf_hours=null",
                  "faults.host_mtbf_hours=null", "faults.degraded_link_mtbf_hours=1e12",
                  "faults.degraded_link_latency_factor=4.0", degrade=True)
    assert len(healthy) == len(slow) == len(mixed)
    inside = [i for i, m in enumerate(mixed) if 0.2 < m["start_s"] and m["start_s"] + m["duration_s"] < 0.7]
    after = [i for i, m in enumerate(mixed) if m["start_s"] > 0.75]
    assert len(inside) > 10 and len(after) > 10
    for i in inside:
        assert mixed[i]["network_s"] == pytest.approx(slow[i]["network_s"], rel=1e-12)
        assert mixed[i]["network_s"] > healthy[i]["network_s"]
    for i in after:
        assert mixed[i]["network_s"] == pytest.approx(healthy[i]["network_s"], rel=1e-12)
    for i in inside + after:
        assert mixed[i]["compute_s"] == pytest.approx(healthy[i]["compute_s"], rel=1e-12)


def test_degraded_links_need_collective_fidelity():
    cfg = parse_config(compose_config(["faults=mtbf", "faults.degraded_link_mtbf_hours=1", "network.fidelity=message",
                                       "model=llama3_8b", "workload=synthetic", "parallel.tp=2"]))
    with pytest.raises(ConfigError, match="needs network.fidelity=collective"):
        build_simulation(cfg, build_cluster(cfg), load_workload(cfg))


def test_a_fault_exactly_at_a_step_boundary_loses_that_step_with_or_without_fast_forward(tmp_path):
    from sim.observe import schemas
    from sim.observe.recorder import ColumnRecorder
    cfg = _config("workload.max_requests=1", "workload.prompt_tokens=128", "workload.output_tokens=200",
                  "parallel.dp=2", "sim.fast_forward=false")
    plan = build_cluster(cfg)
    cluster = build_simulation(cfg, plan, load_workload(cfg))
    cluster.steps = ColumnRecorder(schemas.STEPS, tmp_path / "steps.parquet")
    simulate(cluster)
    boundary = [r for r in pq.read_table(tmp_path / "steps.parquet").to_pylist() if r["replica"] == 0][51]["start_s"]
    finishes = []
    for ff in ("true", "false"):
        result = _simulate(_config("workload.max_requests=1", "workload.prompt_tokens=128", "workload.output_tokens=200",
                                   "parallel.dp=2", f"sim.fast_forward={ff}"), [(boundary, _gpu_fault(0))], down_s=1.0)
        finishes.append((result.requests.column("finish_s").to_pylist(), result.steps))
    assert finishes[0] == finishes[1]


def test_degraded_links_are_drawn_only_for_replicas_with_collectives():
    cfg = FaultConfig(kind="mtbf", degraded_link_mtbf_hours=1.0)
    gpus = [["gpu0", "gpu1"], ["gpu2", "gpu3"]]
    server = {g: 0 for rep in gpus for g in rep}
    sources = fault_sources(cfg, gpus, server, collectives=[True, False])    # TP2, and TP1 x PP2
    assert {s.replicas for s in sources if s.kind == "degraded_link"} == {(0,)}


def test_a_stall_is_reported_while_stragglers_keep_coming():
    from unittest import mock

    from sim.des.simulation import StopRequest
    from sim.policy.batching import ContinuousBatcher
    cfg = parse_config(compose_config(["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "parallel.dp=4",
                                       "workload.max_requests=20", "output.progress=never", "faults=mtbf",
                                       "faults.straggler_mtbf_hours=0.05"]))
    cluster = build_simulation(cfg, build_cluster(cfg), load_workload(cfg))
    with mock.patch.object(ContinuousBatcher, "plan", return_value=None):
        with pytest.raises(ConfigError, match="simulation stalled"):
            simulate(cluster, StopRequest(max_wall_s=60))
