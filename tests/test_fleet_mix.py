"""``python -m sim.procure search.fleet_mix=true``: fleets of two hardware presets under budget and
power caps, and the speed-aware router a mixed fleet needs.

The acceptance case: Llama-3-8B, 1,500 synthetic requests at 60/s, TTFT p99 <= 2 s and TPOT
p99 <= 0.1 s, RTX 4090 and B200 replicas (TP1, 512-token chunks), a 10 kW facility power cap.
RTX 4090s are the cheapest way to the targets but draw the most power per token (18 of them would
be needed by the analytic bound, 11.5 kW); two B200s fit the cap at $11.96/h; a mix of both fits the cap for less, and every
single-hardware answer is confirmed by simulation (the largest RTX 4090 fleet within the cap is
simulated and misses).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cost.money import CostConfig, peak_power_kW
from sim.errors import ConfigError
from sim.config.parse import load_hardware
from sim.policy.routing import Router
from sim.tools.procurement.search import (
    Caps,
    Layout,
    LayoutBound,
    PoolBound,
    Slo,
    TrafficStats,
    cross_pool_candidates,
    mix_candidates,
    serves,
)

REPO = Path(__file__).resolve().parent.parent
CASE = ["model=llama3_8b", "workload=synthetic", "workload.rate_per_s=60", "workload.max_requests=1500",
        "slo.ttft_p99_s=2", "slo.tpot_p99_s=0.1", "search.hardware=[rtx4090,b200]", "search.tp=[1]",
        "search.max_batch_size=[256]", "search.max_tokens_per_step=[512]", "search.fleet_mix=true",
        "search.power_kW=10", "search.max_gpus=32", "search.max_replicas=32", "sensitivity.seeds=1"]


def sim_cli(args: list[str], cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet_mix")
    r = sim_cli(["-m", "sim.procure", *CASE, f"hydra.run.dir={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_a_mixed_fleet_is_cheapest_under_the_power_cap_and_the_simulation_confirms_it(mixed, tmp_path):
    out, result = mixed
    best = result["best"]
    assert set(best["hardware"].split("+")) == {"b200", "rtx4090"}
    assert {g["hardware"] for g in best["groups"]} == {"b200", "rtx4090"}
    assert best["power_kW"] <= 10.0
    assert best["ttft_p99_s"] <= 2.0 and best["tpot_p99_s"] <= 0.1
    # every single-hardware kind: its cheapest fleet meeting the targets within the cap costs
    # more, or none does and the dearest within the cap was simulated and misses
    singles = {k: v for k, v in result["by_kind"].items() if "+" not in k}
    assert set(singles) == {"b200", "rtx4090"}
    for kind, v in singles.items():
        if v["best"] is not None:
            assert v["best"]["meets_slo"] and v["best"]["usd_per_hour"] > best["usd_per_hour"], kind
        else:
            d = v["dearest_within_caps"]
            assert d is not None and d["meets_slo"] is False and d["power_kW"] <= 10.0, kind
    assert singles["b200"]["best"] is not None and singles["rtx4090"]["best"] is None
    # the cap is what makes the mix win: single RTX 4090 fleets cheaper than the mix exist, over the cap
    rows = pq.read_table(out / "procure.parquet").to_pylist()
    capped = [r for r in rows if r["hardware"] == "rtx4090" and r["over_caps"] and not r["pruned"]]
    assert capped and min(r["analytic_usd_per_hour"] for r in capped) < best["usd_per_hour"]
    assert all("search.power_kW=10" in r["over_caps"] for r in capped)
    # confirmed by simulation: the rerun reproduces the mix, within the targets, at its price
    rerun = sim_cli(["-m", "sim", *best["rerun"], "output.progress=never", f"hydra.run.dir={tmp_path / 'rerun'}"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((tmp_path / "rerun" / "summary.json").read_text())
    assert summary["ttft_s"]["p99"] == pytest.approx(best["ttft_p99_s"], rel=1e-9) and summary["ttft_s"]["p99"] <= 2.0
    assert summary["tpot_s"]["p99"] <= 0.1
    assert summary["cost"]["usd_per_hour"] == pytest.approx(best["usd_per_hour"])
    assert {g["hardware"] for g in summary["cost"]["groups"]} == {"b200", "rtx4090"}
    assert any(o.startswith("fleet=") for o in best["rerun"])
    assert "parallel.router=least_outstanding_time" in best["rerun"]
    # its power: every GPU at TDP plus its host, times the PUE
    cost = CostConfig(pue=1.2, host_W_per_gpu={"b200": 787, "rtx4090": 83})
    assert best["power_kW"] == pytest.approx(sum(peak_power_kW(cost, load_hardware(g["hardware"]),
                                                                 g["replicas"] * g["tp"]) for g in best["groups"]))


def test_mixed_fleet_report_pareto_and_sensitivity(mixed):
    out, result = mixed
    report = (out / "procure.md").read_text()
    assert "Caps: " in report and "facility power 10.0 kW" in report
    assert "## Cheapest fleet of each hardware kind" in report and result["best"]["fleet"] in report
    rows = pq.read_table(out / "procure.parquet").to_pylist()
    sim = [r for r in rows if r["goodput_requests_per_s"] is not None]
    front = [r for r in sim if r["pareto"]]
    assert front and all(r["pareto"] is not None for r in sim)
    for r in front:          # nothing simulated has more goodput for less money
        assert not any(o["usd_per_hour"] < r["usd_per_hour"] and o["goodput_requests_per_s"] > r["goodput_requests_per_s"]
                       for o in sim)
    assert (out / "procure_pareto.png").stat().st_size > 10_000
    # bands on the best mix: 8 draws of the calibration's parameters and of the traffic
    bands = result["best"]["bands"]
    draws = pq.read_table(out / "uncertainty.parquet").to_pylist()
    assert bands["draws"] == len(draws) == 8 and 0.0 <= bands["meets_slo_fraction"] <= 1.0
    assert bands["meets_slo_fraction"] == sum(d["meets_slo"] for d in draws) / 8
    for key in ("usd_per_million_output_tokens", "ttft_p99_s", "tpot_p99_s", "goodput_requests_per_s"):
        b = bands[key]
        assert b["low"] < b["high"] and b["low"] <= b["median"] <= b["high"], key
    assert "## Uncertainty of the best configuration" in report
    # the sensitivity study moves the hardware of both groups of the mix
    sens = pq.read_table(out / "sensitivity.parquet").to_pylist()
    base = next(r for r in sens if r["parameter"] == "base")
    hbm = {r["change"]: r for r in sens if r["parameter"] == "HBM bandwidth"}
    assert hbm["+20%"]["tpot_p99_s"] < base["tpot_p99_s"] < hbm["-20%"]["tpot_p99_s"]


def test_bad_search_settings_are_one_line_errors(tmp_path):
    for override, field in (("search.power_kW=-1", "search.power_kW"), ("search.fleet_mix=maybe", "search.fleet_mix"),
                            ("search.mix_router=fastest", "search.mix_router"), ("search.headroom=-2", "search.headroom"),
                            ("search.budget_usd_per_hour=0", "search.budget_usd_per_hour")):
        r = sim_cli(["-m", "sim.procure", "workload.max_requests=20", override, f"hydra.run.dir={tmp_path / field}"])
        assert r.returncode != 0 and field in r.stderr, (override, r.stderr[-500:])
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_no_fleet_within_a_budget_says_so(tmp_path):
    r = sim_cli(["-m", "sim.procure", "model=llama3_8b", "workload.max_requests=100", "search.hardware=[h100]",
                 "search.tp=[1]", "search.budget_usd_per_hour=1", "sensitivity.enabled=false",
                 f"hydra.run.dir={tmp_path}"])
    assert r.returncode != 0 and "excluded by search.budget_usd_per_hour" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr      # no plotting warning before it


# ---------------------------------------------------------------- analytic pieces, no simulation
STATS = TrafficStats(requests=1000, duration_s=100.0, mean_prompt=1000.0, mean_output=100.0, p99_prompt=4000.0,
                     window_prompt_tokens=((1.0, 20_000.0), (10.0, 150_000.0), (100.0, 1_000_000.0)))
SLO = Slo(2.0, 0.1)


def _bound(hw: str, tok_s: float, prefill_tok_s: float, tp: int = 1) -> LayoutBound:
    return LayoutBound(Layout(hw, tp, 1, 256, 512), True, replica_tok_s=tok_s, prefill_tok_s=prefill_tok_s,
                       min_replicas=1)


@settings(max_examples=60, deadline=None)
@given(tok=st.floats(50, 5000), pre=st.floats(1000, 100_000), n=st.integers(1, 20), k=st.integers(0, 3))
def test_serves_is_the_single_layout_bound_summed(tok, pre, n, k):
    """One layout: ``serves`` holds exactly when n - k replicas meet the mean output rate and
    every burst window, as layout_bound's replica count does; a mix's capacity adds up."""
    need = max(STATS.output_tokens_per_s / tok,
               *(0.99 * t / (pre * (w + SLO.ttft_p99_s)) for w, t in STATS.window_prompt_tokens))
    assert serves([(tok, pre, n)], STATS, SLO, k) == (n - k >= need - 1e-9 and n > k)
    # splitting the same replicas into two groups changes nothing
    if n >= 2:
        assert serves([(tok, pre, n - 1), (tok, pre, 1)], STATS, SLO, k) == serves([(tok, pre, n)], STATS, SLO, k)


def test_headroom_holds_whichever_replicas_are_out():
    """N+1 over two kinds of replica: the one with the most output throughput is not the one
    with the most prefill throughput, and losing either must still serve."""
    fast_decode, fast_prefill = (1200.0, 4000.0, 1), (1100.0, 13000.0, 1)
    assert serves([fast_decode, fast_prefill], STATS, SLO, 0)
    assert not serves([fast_decode], STATS, SLO)            # without the fast-prefill one: bursts missed
    assert not serves([fast_decode, fast_prefill], STATS, SLO, 1)
    assert serves([fast_decode, (1100.0, 13000.0, 2)], STATS, SLO, 1) == (
        serves([fast_decode, (1100.0, 13000.0, 1)], STATS, SLO) and serves([(1100.0, 13000.0, 2)], STATS, SLO))
    assert not serves([fast_decode], STATS, SLO, 1)         # k >= the replicas: nothing left


def test_mix_candidates_pair_different_hardware_with_the_same_batch_limits():
    hw = {"a100": load_hardware("a100"), "b200": load_hardware("b200"), "h100": load_hardware("h100")}
    bounds = [_bound("a100", 300, 20_000), _bound("b200", 900, 60_000), _bound("h100", 500, 30_000),
              LayoutBound(Layout("h100", 1, 1, 64, 512), True, replica_tok_s=400, prefill_tok_s=30_000, min_replicas=3)]
    cands = mix_candidates(bounds, STATS, SLO, CostConfig(), hw.__getitem__, max_gpus=10, max_replicas=8,
                           gpus_per_node=8)
    assert cands and all(len(c.kind) == 2 and c.mix for c in cands)
    assert all(c.mix[0][0].max_batch_size == c.mix[1][0].max_batch_size == 256 for c in cands)
    assert all(c.gpus <= 10 and c.replicas <= 8 and c.replicas == sum(r for _, r in c.mix) for c in cands)
    for c in cands:
        units = [(b.replica_tok_s, b.prefill_tok_s, r) for (lay, r) in c.mix for b in bounds if b.layout == lay]
        assert c.pruned == (not serves(units, STATS, SLO))
        assert c.usd_per_hour == pytest.approx(sum(r * hw[lay.hardware].usd_per_hour for lay, r in c.mix))
    c = next(c for c in cands if c.kind == ("a100", "b200") and dict((lay.hardware, r) for lay, r in c.mix) == {"a100": 2, "b200": 1})
    assert c.label() == "2 x a100 TP1 + 1 x b200 TP1"
    caps = Caps(budget_usd_per_hour=8.0, power_kW=2.0)
    caps.apply([c], CostConfig(), hw.__getitem__)
    assert c.power_kW == pytest.approx(2 * peak_power_kW(CostConfig(), hw["a100"], 1) + peak_power_kW(CostConfig(), hw["b200"], 1))
    assert "search.power_kW=2.0" in c.over_caps and "search.budget_usd_per_hour=8.0" in c.over_caps   # $8.76/h
    Caps(budget_usd_per_hour=9.0, power_kW=4.0).apply([c], CostConfig(), hw.__getitem__)
    assert c.over_caps == ""


def test_cross_pools_prefill_on_one_hardware_decode_on_another():
    hw = {n: load_hardware(n) for n in ("h100", "b200", "rtx4090")}
    lay = {n: Layout(n, 1, 1, 256, 2048) for n in hw}
    bounds = [PoolBound(lay["h100"], prefill_ok=True, decode_ok=False, min_prefill=2, prefill_tok_s=40_000.0),
              PoolBound(lay["b200"], prefill_ok=False, decode_ok=True, min_decode=1, decode_tok_s=3000.0),
              PoolBound(lay["rtx4090"], prefill_ok=True, decode_ok=True, min_prefill=1, min_decode=1, decode_tok_s=10.0,
                        prefill_tok_s=1000.0)]
    cands = cross_pool_candidates(bounds, STATS, CostConfig(), hw.__getitem__, max_gpus=6, max_replicas=6,
                                  gpus_per_node=8, headroom=1)
    # only h100 can prefill for b200 (rtx4090 has no NVLink: no pools); h100 cannot decode
    assert cands and {(c.mix[0][0].hardware, c.mix[1][0].hardware) for c in cands} == {("h100", "b200")}
    for c in cands:
        p, d = c.mix[0][1], c.mix[1][1]
        assert c.prefill_replicas == p and c.replicas == p + d
        assert c.pruned == (p < 2 or d < 1)
        assert bool(c.headroom_short) == (p < 2 + 1 or d < 1 + 1) and (not c.headroom_short or "N+1" in c.headroom_short)   # each pool N+1
        assert c.label() == f"{p}P x h100 TP1 + {d}D x b200 TP1"


def test_caps_reject_bad_values():
    with pytest.raises(ConfigError, match="search.power_kW"):
        Caps(power_kW=0)
    with pytest.raises(ConfigError, match="search.headroom"):
        Caps(headroom=True)  # type: ignore[arg-type]
    assert Caps().budget_usd_per_hour is None


# ---------------------------------------------------------------- the speed-aware router
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6))
def test_least_outstanding_time_equals_least_outstanding_tokens_on_equal_replicas(seed, n):
    rng = random.Random(seed)
    a, b = Router("least_outstanding_tokens", n), Router("least_outstanding_time", n, [5000.0] * n)
    live = []
    for _ in range(200):
        if live and rng.random() < 0.4:
            k, p, o = live.pop(rng.randrange(len(live)))
            a.done(k, p, o)
            b.done(k, p, o)
            continue
        p, o = rng.randint(1, 4000), rng.randint(1, 500)
        spans = [rng.randint(0, 50) for _ in range(n)]
        k = a.pick(p, o, spans.__getitem__)
        assert b.pick(p, o, spans.__getitem__) == k
        live.append((k, p, o))


def test_least_outstanding_time_loads_replicas_in_proportion_to_their_speed():
    """Equal prompts that never finish: a replica three times as fast receives three times the
    tokens (least_outstanding_tokens would split them evenly)."""
    fair, fast = Router("least_outstanding_tokens", 2), Router("least_outstanding_time", 2, [1000.0, 3000.0])
    for _ in range(400):
        fair.pick(100, 10)
        fast.pick(100, 10)
    assert fair.prompt_tokens == [20_000, 20_000]
    assert fast.prompt_tokens == [10_000, 30_000]
    fast.down = {1}
    assert fast.pick(100, 10) == 0


def test_a_mixed_fleet_fills_as_many_pcie_boxes_as_it_needs(tmp_path):
    """A mixed fleet's PCIe group beyond one 8-GPU box takes whole boxes (19 RTX 4090s: three),
    each reached from the frontend; the run completes."""
    from sim.build import build_cluster
    from sim.config.compose import compose_config
    from sim.config.parse import parse_config

    cfg = parse_config(compose_config(["model=llama3_8b", "workload.max_requests=50",
                                       "fleet=[{hardware: rtx4090, replicas: 19, tp: 1}, {hardware: b200, replicas: 1, tp: 1}]"]))
    plan = build_cluster(cfg)
    assert len(plan.replicas) == 20 and plan.gpus == 20
    cpus = [n for n, d in plan.graph.nodes(data=True) if d.get("kind") == "cpu" and n.startswith("fleet0")]
    assert len(cpus) == 3
    servers = {plan.graph.nodes[g]["server"] for rp in plan.replicas[:19] for stage in rp.stage_gpus for g in stage}
    assert len(servers) == 3
    r = sim_cli(["-m", "sim", "model=llama3_8b", "workload.max_requests=200", "parallel.router=least_outstanding_time",
                 "fleet=[{hardware: rtx4090, replicas: 19, tp: 1}, {hardware: b200, replicas: 1, tp: 1}]",
                 "output.progress=never", f"hydra.run.dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["requests"]["completed"] == 200
    with pytest.raises(ConfigError, match="does not fit"):
        build_cluster(parse_config(compose_config(["model=llama3_8b", "topology.gpus_per_node=2",
                                                   "fleet=[{hardware: rtx4090, replicas: 2, tp: 4}, {hardware: b200, replicas: 1, tp: 1}]"])))


def test_headroom_excludes_fleets_short_of_n_plus_k_from_the_search():
    """N+1: a fleet that meets the bound only with every replica serving is not allowed (the
    one-step-cheaper check cannot pick it either); the bound itself still prunes."""
    from sim.tools.procurement.search import candidates

    hw = {"b200": load_hardware("b200")}
    b = _bound("b200", 900, 60_000)
    b.min_replicas = 3
    cands = candidates([b], STATS, CostConfig(), hw.__getitem__, max_gpus=8, max_replicas=8, gpus_per_node=8,
                       headroom=1)
    Caps(headroom=1).apply(cands, CostConfig(), hw.__getitem__)
    by_r = {c.replicas: c for c in cands}
    assert by_r[2].pruned and by_r[2].over_caps
    assert not by_r[3].pruned and "N+1" in by_r[3].over_caps
    assert not by_r[4].pruned and by_r[4].over_caps == ""
