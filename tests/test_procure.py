"""``python -m sim.procure``: cheapest fleet meeting the SLOs, confirmed by simulation.

The acceptance run uses the bundled Azure code trace at 4x its recorded rate (its first
1,500 requests, 151 s of traffic, to keep the suite fast; the procurement notebook runs the
whole trace): the configuration it returns meets the SLOs when simulated again on its own
through ``python -m sim``, and the configuration one step cheaper does not.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sim.errors import ConfigError
from sim.tools.procurement.search import Candidate, Layout, Slo, search

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = ["workload=azure_code", "workload.rate_scale=4", "workload.max_requests=1500"]
SLO = {"ttft_p99_s": 5.0, "tpot_p99_s": 0.1}
SEARCH = ["search.hardware=[h100,h200]", "search.tp=[2,4,8]", "search.max_batch_size=[256]",
          "search.max_tokens_per_step=[512,2048]"]


def sim_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def procured(tmp_path_factory):
    out = tmp_path_factory.mktemp("procure")
    r = sim_cli(["-m", "sim.procure", *WORKLOAD, f"slo.ttft_p99_s={SLO['ttft_p99_s']}",
                 f"slo.tpot_p99_s={SLO['tpot_p99_s']}", *SEARCH, "sensitivity.seeds=1", f"hydra.run.dir={out}"], REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def resimulate(cfg: dict, tmp: Path) -> dict:
    topology = "hgx" if cfg["gpus"] <= 8 else "multi_node_ib"
    r = sim_cli(["-m", "sim", *WORKLOAD, f"hardware={cfg['hardware']}", f"topology={topology}",
                 f"parallel.tp={cfg['tp']}", f"parallel.pp={cfg['pp']}", f"parallel.dp={cfg['replicas']}",
                 f"scheduler.max_batch_size={cfg['max_batch_size']}",
                 f"scheduler.max_tokens_per_step={cfg['max_tokens_per_step']}",
                 "output.progress=never", "output.write_parquet=false", f"hydra.run.dir={tmp}"], REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((tmp / "summary.json").read_text())


def meets(summary: dict) -> bool:
    return (summary["requests"]["completed"] == summary["requests"]["total"]
            and summary["ttft_s"]["p99"] <= SLO["ttft_p99_s"] and summary["tpot_s"]["p99"] <= SLO["tpot_p99_s"])


def test_best_meets_the_slos_when_simulated_on_its_own(procured, tmp_path):
    out, result = procured
    best = result["best"]
    assert set(best) >= {"hardware", "gpus", "tp", "pp", "replicas", "usd_per_million_output_tokens",
                         "ttft_p99_s", "tpot_p99_s"}
    assert best["gpus"] == best["tp"] * best["pp"] * best["replicas"]
    summary = resimulate(best, tmp_path / "by_hand")
    assert meets(summary)
    assert summary["ttft_s"]["p99"] == pytest.approx(best["ttft_p99_s"], rel=1e-9)
    assert summary["cost"]["usd_per_million_output_tokens"] == pytest.approx(best["usd_per_million_output_tokens"])


def test_rerun_overrides_reproduce_every_simulated_point(procured, tmp_path):
    """``rerun`` (best JSON, procure.parquet, procure.md) given to ``python -m sim`` reproduces
    the point's numbers exactly: topology, batch limits and chunk size included."""
    out, result = procured
    best = result["best"]
    assert any(o.startswith("topology=") or o.startswith("hardware=") for o in best["rerun"])
    assert f"scheduler.max_tokens_per_step={best['max_tokens_per_step']}" in best["rerun"]
    assert "python -m sim " + " ".join(best["rerun"]) in (out / "procure.md").read_text()
    rows = [r for r in pq.read_table(out / "procure.parquet").to_pylist() if r["rerun"] and r["error"] is None]
    assert rows and any(r["rerun"] == " ".join(best["rerun"]) for r in rows)
    for i, row in enumerate([next(r for r in rows if r["rerun"] == " ".join(best["rerun"])), rows[-1]]):
        r = sim_cli(["-m", "sim", *row["rerun"].split(" "), "output.progress=never", "output.format=json",
                     f"hydra.run.dir={tmp_path / str(i)}"], REPO)
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads((tmp_path / str(i) / "summary.json").read_text())
        assert s["ttft_s"]["p99"] == pytest.approx(row["ttft_p99_s"], rel=1e-12)
        assert s["tpot_s"]["p99"] == pytest.approx(row["tpot_p99_s"], rel=1e-12)
        assert s["cost"]["usd_per_million_output_tokens"] == pytest.approx(row["usd_per_million_output_tokens"],
                                                                          rel=1e-12)


def test_one_step_cheaper_misses_and_the_report_shows_both(procured, tmp_path):
    out, result = procured
    cheaper = result["one_step_cheaper"]
    assert cheaper is not None and cheaper["meets_slo"] is False
    table = pq.read_table(out / "procure.parquet").to_pylist()
    best_row = next(r for r in table if r["meets_slo"] and r["gpus"] == result["best"]["gpus"]
                    and r["hardware"] == result["best"]["hardware"] and r["tp"] == result["best"]["tp"])
    cheaper_row = next(r for r in table if r["hardware"] == cheaper["hardware"] and r["tp"] == cheaper["tp"]
                       and r["replicas"] == cheaper["replicas"] and r["simulated"]
                       and r["ttft_p99_s"] == cheaper["ttft_p99_s"])
    assert cheaper_row["analytic_usd_per_hour"] < best_row["analytic_usd_per_hour"]
    # every configuration strictly cheaper than the best either was pruned or was simulated and missed
    for r in table:
        if r["analytic_usd_per_hour"] is not None and r["analytic_usd_per_hour"] < best_row["analytic_usd_per_hour"]:
            assert r["pruned"] or r["meets_slo"] is False, r
    cfg = {**cheaper, "max_batch_size": cheaper_row["max_batch_size"],
           "max_tokens_per_step": cheaper_row["max_tokens_per_step"]}
    assert not meets(resimulate(cfg, tmp_path))
    md = (out / "procure.md").read_text()
    assert "## Best" in md and "One step cheaper" in md and "misses" in md


def test_outputs_frontier_and_sensitivity(procured):
    out, result = procured
    assert (out / "procure_frontier.png").stat().st_size > 10_000
    assert (out / "sensitivity.png").stat().st_size > 10_000
    table = pq.read_table(out / "procure.parquet")
    for col in ("hardware", "tp", "pp", "replicas", "gpus", "max_batch_size", "max_tokens_per_step", "pruned",
                "meets_slo", "ttft_p99_s", "tpot_p99_s", "goodput_requests_per_s", "usd_per_million_output_tokens",
                "joules_per_output_token"):
        assert col in table.column_names
    sens = pq.read_table(out / "sensitivity.parquet").to_pylist()
    params = {(r["parameter"], r["change"]) for r in sens}
    for p in ("HBM bandwidth", "FLOP/s", "link latency", "link bandwidth", "price"):
        assert (p, "-20%") in params and (p, "+20%") in params
    base = next(r for r in sens if r["parameter"] == "base")
    price_up = next(r for r in sens if r["parameter"] == "price" and r["change"] == "+20%")
    assert price_up["usd_per_million_output_tokens"] == pytest.approx(1.2 * base["usd_per_million_output_tokens"])
    hbm_up = next(r for r in sens if r["parameter"] == "HBM bandwidth" and r["change"] == "+20%")
    hbm_down = next(r for r in sens if r["parameter"] == "HBM bandwidth" and r["change"] == "-20%")
    assert hbm_up["tpot_p99_s"] < base["tpot_p99_s"] < hbm_down["tpot_p99_s"]
    assert any(r["parameter"] == "trace replay" for r in sens)


# ------------------------------------------------------------------ search logic, no simulation
def _cand(usd: float, pruned: bool = False, name: str = "h100") -> Candidate:
    return Candidate(Layout(name, 8, 1, 256, 2048), replicas=int(usd), usd_per_hour=usd, pruned=pruned,
                     analytic_utilization=0.5)


def _fake(passing: set[float]):
    calls = []

    def simulate(c: Candidate) -> dict:
        calls.append(c.usd_per_hour)
        ok = c.usd_per_hour in passing
        return {"requests": {"completed": 1, "total": 1}, "ttft_s": {"p99": 0.1 if ok else 9.0},
                "tpot_s": {"p99": 0.01}}
    return simulate, calls


def test_search_simulates_cheapest_unpruned_first_and_checks_one_step_cheaper():
    cands = [_cand(1, pruned=True), _cand(2, pruned=True), _cand(3), _cand(4), _cand(5)]
    simulate, calls = _fake({4.0, 5.0})
    best, cheaper = search(cands, Slo(1.0, 1.0), simulate, max_runs=10)
    assert best.usd_per_hour == 4 and cheaper.usd_per_hour == 3
    assert calls == [3, 4]          # pruned ones never simulated; the cheaper one already known to miss


def test_search_corrects_a_wrong_pruning():
    cands = [_cand(1, pruned=True), _cand(2, pruned=True), _cand(3)]
    simulate, calls = _fake({2.0, 3.0})
    best, cheaper = search(cands, Slo(1.0, 1.0), simulate, max_runs=10)
    assert best.usd_per_hour == 2 and cheaper.usd_per_hour == 1 and calls == [3, 2, 1]


def test_search_gives_up_after_max_runs():
    cands = [_cand(float(i)) for i in range(1, 6)]
    simulate, calls = _fake(set())
    assert search(cands, Slo(1.0, 1.0), simulate, max_runs=3) == (None, None)
    assert len(calls) == 3


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="slo.tpot_p99_s"):
        Slo(1.0, -2)
    r = sim_cli(["-m", "sim.procure", "search.colour=[1]", f"hydra.run.dir={tmp_path}"], REPO)
    assert r.returncode != 0 and "search.colour" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = sim_cli(["-m", "sim.procure", "+search.colour=[1]", f"hydra.run.dir={tmp_path}"], REPO)
    assert r.returncode != 0 and "search has unknown field" in r.stderr and "Traceback" not in r.stderr
    r = sim_cli(["-m", "sim.procure", *WORKLOAD, "workload.max_requests=50", "slo.ttft_p99_s=0.001",
                 "search.hardware=[h100]", "search.tp=[8]", "search.max_tokens_per_step=[2048]",
                 f"hydra.run.dir={tmp_path}"], REPO)
    assert r.returncode != 0 and "no configuration" in r.stderr and "Traceback" not in r.stderr


def test_traffic_stats_bursts():
    from sim.config.compose import compose_config
    from sim.tools.procurement.cli import traffic_stats

    s = traffic_stats(compose_config(WORKLOAD))
    assert s.requests == 1500 and s.mean_prompt > 0 and s.p99_prompt >= s.mean_prompt
    windows = [w for w, _ in s.window_prompt_tokens]
    tokens = [t for _, t in s.window_prompt_tokens]
    assert windows == sorted(windows) and tokens == sorted(tokens)          # longer windows hold more
    assert tokens[-1] <= s.mean_prompt * s.requests + 1e-6
    # a window's busiest burst is at least its share of the mean rate
    for w, t in s.window_prompt_tokens:
        assert t >= s.mean_prompt * s.requests * min(1.0, w / s.duration_s) * 0.999


def test_disaggregated_pools_win_where_prefill_chunks_break_the_tpot_target(tmp_path):
    """A 15 ms TPOT p99 target: every co-located layout's decode steps share prefill chunks
    and miss it (pruned analytically); the search picks prefill and decode pools, their
    rerun reproduces the point, and pools one step cheaper miss."""
    out = tmp_path / "pools"
    r = sim_cli(["-m", "sim.procure", "workload=azure_code", "workload.rate_scale=2", "workload.max_requests=1500",
                 "slo.ttft_p99_s=5", "slo.tpot_p99_s=0.015", "search.hardware=[h100]", "search.tp=[8]",
                 "search.disagg=true", "sensitivity.enabled=false", f"hydra.run.dir={out}"], REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    best = json.loads(r.stdout.strip().splitlines()[-1])["best"]
    assert best["prefill_replicas"] >= 1 and best["decode_replicas"] >= 1 and best["tpot_p99_s"] <= 0.015
    assert best["gpus"] == 8 * (best["prefill_replicas"] + best["decode_replicas"])
    table = pq.read_table(out / "procure.parquet").to_pylist()
    colocated = [row for row in table if row["prefill_replicas"] is None]
    assert colocated and all(row["pruned"] and not row["simulated"] for row in colocated)
    assert any("prefill chunk" in (row["error"] or "") for row in colocated)
    rerun = sim_cli(["-m", "sim", *best["rerun"], "output.progress=never", f"hydra.run.dir={tmp_path / 'rerun'}"], REPO)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((tmp_path / "rerun" / "summary.json").read_text())
    assert summary["ttft_s"]["p99"] == pytest.approx(best["ttft_p99_s"], rel=1e-9)
    assert summary["kv_transfer"]["transfers"] > 0
    report = (out / "procure.md").read_text()
    assert f"{best['prefill_replicas']}P + {best['decode_replicas']}D x h100 TP8" in report


def test_search_status_tells_cut_short_from_none():
    """Out of runs is not "nothing meets": a fleet-mix kind cut short is left out of the comparison."""
    from sim.tools.procurement.search import descend, search_status

    simulate, calls = _fake({5.0})
    assert search_status([_cand(float(i)) for i in range(1, 6)], Slo(1.0, 1.0), simulate, 2)[2] == "cut short"
    simulate, calls = _fake(set())
    assert search_status([_cand(float(i)) for i in range(1, 4)], Slo(1.0, 1.0), simulate, 10)[2] == "none"
    # the dearest meets though every unpruned one missed: step down to the cheapest that meets
    cands = [_cand(1, pruned=True), _cand(2), _cand(3, pruned=True), _cand(4, pruned=True)]
    simulate, calls = _fake({3.0, 4.0})
    assert search_status(cands, Slo(1.0, 1.0), simulate, 10)[2] == "none" and calls == [2]
    simulate(cands[-1])
    cands[-1].meets_slo, cands[-1].summary = True, {}
    best, cheaper = descend(cands, 3, Slo(1.0, 1.0), simulate)
    assert best.usd_per_hour == 3 and cheaper.usd_per_hour == 2
