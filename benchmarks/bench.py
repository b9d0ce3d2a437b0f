"""Benchmark: wall time, simulated events per second and peak memory of representative runs.

Usage: ``python benchmarks/bench.py [--quick]``. Each case runs ``python -m sim`` in its own
process (so peak RSS is that run's alone) and reads ``summary.json`` for the event count
and the simulator's own wall time. Prints one table and one JSON line per case.
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

CASES = {
    "default (azure_code, 8,819 req, 70B TP8, collective)": [],
    "message fidelity (azure_code first 30 req, 70B TP8)": ["network.fidelity=message", "workload.max_requests=30"],
    "dp=4 x tp=2, 70B fp8, 2x rate (collective)": ["parallel.tp=2", "parallel.dp=4", "precision.weights=fp8",
                                                  "workload.rate_scale=2"],
}
QUICK = {"message fidelity (azure_code first 10 req, 70B TP8)": ["network.fidelity=message", "workload.max_requests=10"],
         "default, first 1,000 req": ["workload.max_requests=1000"]}


def run_case(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sim", f"hydra.run.dir={tmp}", "output.progress=never", *overrides]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, _, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode()
        summary_path = Path(tmp) / "summary.json"
        if not summary_path.exists():
            raise SystemExit(f"case failed: {' '.join(overrides)}\n{err}")
        summary = json.loads(summary_path.read_text())
    return {"process_wall_s": wall, "sim_wall_s": summary["sim"]["wall_s"], "events": summary["sim"]["events"],
            "events_per_s": summary["sim"]["events_per_s"], "peak_rss_MB": rusage.ru_maxrss / 1024.0,
            "requests": summary["requests"]["completed"], "steps": summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small cases only")
    args = parser.parse_args()
    cases = QUICK if args.quick else CASES
    print(f"{'case':58s} {'wall s':>8s} {'sim s':>8s} {'events':>10s} {'events/s':>10s} {'peak MB':>8s}")
    for name, overrides in cases.items():
        r = run_case(overrides)
        print(f"{name:58s} {r['process_wall_s']:8.2f} {r['sim_wall_s']:8.2f} {r['events']:10d} "
              f"{r['events_per_s']:10.0f} {r['peak_rss_MB']:8.1f}")
        print(json.dumps({"case": name, **r}))


if __name__ == "__main__":
    main()
