"""A run stopped early leaves outputs a person can read (issue 11).

Rule: Ctrl-C (SIGINT), SIGTERM and ``sim.max_wall_s`` stop ``python -m sim`` at the next
event with exit codes 130, 143 and 3 and one line saying so; ``steps.parquet`` (the rows so
far), ``requests.parquet`` (unfinished requests marked ``unfinished``) and ``summary.json``
(``"complete": false``, the simulated time reached) are all there and read back with
pyarrow; no temporary file is left behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from helpers import ROOT

# 64 GPUs replaying the whole Azure code trace one step at a time: tens of seconds, time
# enough to be interrupted once the progress line shows the simulation has started.
LONG_RUN = ["parallel.dp=8", "topology=multi_node_ib", "sim.fast_forward=false", "output.progress=always"]


def _check_outputs(out, stderr: str, code: int, rc: int) -> None:
    assert rc == code, stderr[-2000:]
    lines = [l for l in stderr.strip().splitlines() if l.startswith("stopped:")]
    assert len(lines) == 1 and "partial outputs" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["sim"]["sim_time_s"] > 0
    req = pq.read_table(out / "requests.parquet")
    status = req.column("status").to_pylist()
    assert "unfinished" in status and summary["requests"]["unfinished"] == status.count("unfinished")
    assert summary["requests"]["completed"] == status.count("completed")
    steps = pq.read_table(out / "steps.parquet")
    assert steps.num_rows == summary["steps"] and steps.num_rows > 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_run_and_keeps_what_was_simulated(tmp_path, signum, code):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "sim", *LONG_RUN, f"hydra.run.dir={out}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen, started = [], threading.Event()

    def read() -> None:
        for chunk in iter(lambda: proc.stderr.read(64), ""):
            seen.append(chunk)
            if "[sim]" in "".join(seen[-3:]):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(120), "".join(seen)[-2000:]
    time.sleep(0.5)
    proc.send_signal(signum)
    rc = proc.wait(120)
    reader.join(10)
    _check_outputs(out, "".join(seen), code, rc)


def test_wall_limit_stops_the_run_with_exit_3(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, "-m", "sim", "sim.fast_forward=false", "sim.max_wall_s=0.3",
                          "output.progress=never", "output.timeline=true", "output.timeline_window_s=[0,5]",
                          f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    _check_outputs(out, res.stderr, 3, res.returncode)
    assert "sim.max_wall_s=0.3" in res.stderr
    # the timeline is complete JSON too, unfinished requests ending where the run stopped
    trace = json.loads((out / "timeline.json").read_text())
    assert any(e["ph"] == "X" for e in trace["traceEvents"])


def test_a_sweep_runs_every_job_and_exits_1_when_some_failed(tmp_path):
    """Jobs stopped by their wall limit fail the sweep, after its last job, with one line;
    each keeps its partial outputs and an error.txt saying so."""
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, "-m", "sim", "-m", f"hydra.sweep.dir={sweep}", "workload.max_requests=3000,4000",
                          "sim.max_wall_s=0.01", "sim.fast_forward=false", "output.progress=never"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: 2 sweep job(s) failed (jobs 0, 1); see their error.txt in {sweep}"
    for job in ("0", "1"):
        assert (sweep / job / "error.txt").read_text().startswith("failed: stopped by sim.max_wall_s")
        assert json.loads((sweep / job / "summary.json").read_text())["complete"] is False
