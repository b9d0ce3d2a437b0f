"""Benchmark: wall time, SimPy events/s, simulated requests per wall-second, simulated time per
wall time and peak memory of representative runs; link hops/s under message fidelity; the
frontier's default grid.

Usage: ``python benchmarks/bench.py [--quick] [--only SUBSTRING]``. Each case runs in its own
process (so peak RSS is that run's alone); simulation cases read ``summary.json`` for the
event count, the simulated time and the simulator's own wall time. Prints one table and one
JSON line per case. Speed is measured here, never asserted in tests.

Conversation-like lengths follow the Azure LLM inference trace 2023 (conversation): median
prompt ~1,020 and median output ~129 tokens (Patel et al., Splitwise, ISCA 2024, section 3).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONVERSATION = ["workload=synthetic",
                "workload.prompt_tokens={dist: lognormal, median: 1020, sigma: 1.0, min: 16, max: 8192}",
                "workload.output_tokens={dist: lognormal, median: 129, sigma: 0.8, min: 1, max: 2048}"]
FLEET_64 = ["parallel.dp=8", "topology=multi_node_ib"]                        # 8 x 70B TP8
SMALL_64 = ["model=llama3_8b", "parallel.tp=1", "parallel.dp=64", "topology=multi_node_ib"]   # 64 x 8B TP1

CASES: dict[str, tuple[str, list[str]]] = {
    "default (azure_code 8,819 req, 70B TP8, 8 GPUs)": ("sim", []),
    "azure_code recorded rate, 8 x 70B TP8 (64 GPUs)": ("sim", FLEET_64),
    "1 h conversation-like Poisson, 20,000 req, 64 GPUs": (
        "sim", [*CONVERSATION, "workload.rate_per_s=5.5556", "workload.max_requests=20000", *FLEET_64]),
    "100,000 synthetic req, 64 x 8B TP1": (
        "sim", [*CONVERSATION, "workload.rate_per_s=200", "workload.max_requests=100000", *SMALL_64]),
    "1,000,000 synthetic req, 64 x 8B TP1": (
        "sim", [*CONVERSATION, "workload.rate_per_s=200", "workload.max_requests=1000000", *SMALL_64]),
    "message fidelity (azure_code first 30 req, 70B TP8)": ("sim", ["network.fidelity=message",
                                                                     "workload.max_requests=30"]),
    "disaggregated pools (azure_code, 1 prefill + 1 decode 70B TP8)": ("sim", ["disagg=pools"]),
    "mooncake, 3 prefill + 1 decode 70B TP8, prefix-aware": (
        "sim", ["workload=mooncake_synthetic", "disagg=pools", "disagg.prefill.replicas=3",
                "scheduler.prefix_caching=true", "parallel.router=prefix_aware"]),
    "DeepSeek-V3 fp8, EP16 on 2 nodes (azure_code first 2,000 req)": (
        "sim", ["model=deepseek_v3", "precision.weights=fp8", "topology=multi_node_ib", "parallel.tp=16",
                "parallel.ep=16", "workload.max_requests=2000"]),
    "a day of azure_code (211,656 req), 6 x 70B TP4 fixed": ("sim", ["+experiment=fleet_day"]),
    "a day of azure_code, autoscaled 1-6 x 70B TP4, faults x1000": (
        "sim", ["+experiment=fleet_day", "autoscale=slo", "autoscale.slo_ttft_s=1", "faults=mtbf",
                "faults.rate_scale=1000"]),
    "mixed fleet 48 x RTX 4090 + 16 x B200 (8B TP1), 100,000 req, least_outstanding_time": (
        "sim", [*CONVERSATION, "workload.rate_per_s=200", "workload.max_requests=100000", "model=llama3_8b",
                "parallel.router=least_outstanding_time",
                "fleet=[{hardware: rtx4090, replicas: 48, tp: 1}, {hardware: b200, replicas: 16, tp: 1}]"]),
    "frontier default grid (70B, H100, up to 256 GPUs)": ("frontier", []),
}
QUICK = {
    "default, first 1,000 req": ("sim", ["workload.max_requests=1000"]),
    "message fidelity (azure_code first 10 req, 70B TP8)": ("sim", ["network.fidelity=message",
                                                                     "workload.max_requests=10"]),
    "frontier default grid (70B, H100, up to 256 GPUs)": ("frontier", []),
}


def _process(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; (wall s, peak RSS MB of that process, its stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"case failed: {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
        return wall, rusage.ru_maxrss / 1024.0, out.read().decode()


def run_sim(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wall, peak, _ = _process([sys.executable, "-m", "sim", f"hydra.run.dir={tmp}", "output.progress=never",
                                     *overrides])
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    s = summary["sim"]
    out = {"process_wall_s": wall, "sim_wall_s": s["wall_s"], "events": s["events"],
           "events_per_s": s["events_per_s"], "requests": summary["requests"]["total"],
           "requests_per_wall_s": summary["requests"]["total"] / s["wall_s"],
           "sim_time_s": s["sim_time_s"], "sim_time_per_wall_s": s["sim_time_s"] / s["wall_s"],
           "peak_rss_MB": peak, "steps": summary["steps"]}
    if "link_hops" in s:
        out["link_hops"] = s["link_hops"]
        out["link_hops_per_s"] = s["link_hops"] / s["wall_s"]
    return out


def run_frontier(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wall, peak, out = _process([sys.executable, "-m", "sim.frontier", f"out={tmp}", *overrides])
    headline = json.loads(out.strip().splitlines()[-1])
    return {"process_wall_s": wall, "search_wall_s": headline["wall_s"], "points": headline["points"],
            "peak_rss_MB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases only")
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    args = parser.parse_args()
    cases = QUICK if args.quick else CASES
    print(f"{'case':54s} {'wall s':>7s} {'events/s':>9s} {'req/wall-s':>10s} {'sim/wall':>9s} {'peak MB':>8s}  other")
    for name, (kind, overrides) in cases.items():
        if args.only and args.only not in name:
            continue
        if kind == "frontier":
            r = run_frontier(overrides)
            print(f"{name:54s} {r['process_wall_s']:7.2f} {'':>9s} {'':>10s} {'':>9s} {r['peak_rss_MB']:8.1f}  "
                  f"search {r['search_wall_s']:.2f} s, {r['points']} points")
        else:
            r = run_sim(overrides)
            other = f"{r['link_hops_per_s']:,.0f} link hops/s" if "link_hops" in r else f"{r['steps']:,} steps"
            print(f"{name:54s} {r['sim_wall_s']:7.2f} {r['events_per_s']:9.0f} {r['requests_per_wall_s']:10.0f} "
                  f"{r['sim_time_per_wall_s']:9.0f} {r['peak_rss_MB']:8.1f}  {other}")
        print(json.dumps({"case": name, **r}), flush=True)


if __name__ == "__main__":
    main()
