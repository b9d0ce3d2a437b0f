"""``python -m sim`` as a user runs it: outputs, sweeps, and one-line errors.

Rules:

* a run exits 0, prints its headline as one JSON line on stdout, and writes
  ``requests.parquet``, ``steps.parquet``, ``summary.json`` (with the documented keys) and the
  resolved ``config.yaml`` into ``hydra.run.dir``;
* ``-m`` sweeps write one job directory per point, each with its own summary;
* a user error exits non-zero with one stderr line starting ``error:`` (Hydra's own message for
  an unknown preset) and never a Python traceback;
* the full default run (bundled Azure trace, 8,819 requests) completes every request.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

SUMMARY_KEYS = {
    "requests": ("total", "completed"),
    "ttft_s": ("mean", "p50", "p90", "p99"),
    "tpot_s": ("mean", "p50", "p90", "p99"),
    "e2e_s": ("mean", "p50", "p90", "p99"),
    "throughput": ("output_tokens_per_s",),
    "time_breakdown": ("compute_s", "memory_s", "network_s", "fixed_s"),
    "cost": ("gpus", "usd_per_hour", "usd_per_million_output_tokens"),
    "sim": ("wall_s", "events"),
}


def sim(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "sim", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def json_lines(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def check_summary(summary: dict) -> None:
    for group, keys in SUMMARY_KEYS.items():
        assert group in summary, group
        for k in keys:
            assert k in summary[group], f"{group}.{k}"
    for group in ("ttft_s", "tpot_s", "e2e_s"):
        assert all(isinstance(summary[group][k], float) and math.isfinite(summary[group][k])
                   for k in ("mean", "p50", "p90", "p99"))
        assert summary[group]["p50"] <= summary[group]["p90"] <= summary[group]["p99"]
    assert summary["throughput"]["output_tokens_per_s"] > 0
    assert summary["cost"]["usd_per_million_output_tokens"] > 0
    assert summary["sim"]["events"] > 0 and summary["sim"]["wall_s"] > 0
    parts = summary["time_breakdown"]
    assert sum(parts[k] for k in ("compute_s", "memory_s", "network_s", "fixed_s")) == \
        pytest.approx(parts["total_s"], rel=1e-12)


def test_run_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    res = sim(f"hydra.run.dir={run_dir}", "workload.max_requests=200", "output.progress=never")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = json_lines(res.stdout)
    assert len(lines) == 1
    headline = lines[0]
    assert headline["requests"]["total"] == 200 and headline["requests"]["completed"] == 200
    assert Path(headline["run_dir"]).resolve() == run_dir.resolve()
    for name in ("requests.parquet", "steps.parquet", "summary.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    check_summary(summary)
    assert summary["requests"]["total"] == 200 and summary["requests"]["completed"] == 200
    assert summary["cost"]["gpus"] == 8 and summary["cost"]["usd_per_hour"] == pytest.approx(8 * 2.69)
    for k in ("requests", "ttft_s", "tpot_s", "throughput"):
        assert headline[k] == summary[k]
    for k in ("model", "gpus", "usd_per_hour", "usd_per_million_output_tokens"):
        assert headline["cost"][k] == summary["cost"][k]
    assert headline["cost"]["joules_per_output_token"] == summary["cost"]["energy"]["joules_per_output_token"]
    assert pq.read_table(run_dir / "requests.parquet").num_rows == 200
    assert pq.read_table(run_dir / "steps.parquet").num_rows == summary["steps"] > 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["workload"]["max_requests"] == 200
    assert cfg["parallel"]["tp"] == 8 and cfg["model"]["name"] == "llama3_70b"


def test_multirun_writes_one_job_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    res = sim("-m", "parallel.tp=2,4,8", "workload.max_requests=30", "model=llama3_8b", f"hydra.sweep.dir={sweep}",
              "output.progress=never")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert len(json_lines(res.stdout)) == 3
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(jobs) == 3
    tps, ttfts = [], []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        check_summary(summary)
        assert summary["requests"]["completed"] == 30
        assert (job / "requests.parquet").is_file() and (job / "steps.parquet").is_file()
        assert (job / "config.yaml").is_file()
        tps.append(summary["config"]["tp"])
        ttfts.append(summary["ttft_s"]["mean"])
        assert summary["cost"]["gpus"] == summary["config"]["tp"]
    assert sorted(tps) == [2, 4, 8]
    assert len(set(ttfts)) == 3


@pytest.fixture
def bad_trace(tmp_path) -> Path:
    p = tmp_path / "BADFILE.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,10\n1.5,12x,10\n2.0,100,10\n")
    return p


ERRORS = {
    "tp-not-divisor": (["parallel.tp=3"], "parallel.tp=3"),
    "405b-does-not-fit": (["model=llama3_405b", "parallel.tp=1"], "does not fit"),
    "negative-rate-scale": (["workload.rate_scale=-1"], "workload.rate_scale"),
    "tp16-on-hgx": (["topology=hgx", "parallel.tp=16"], "topology=hgx"),
    "unknown-router": (["parallel.router=random"], "parallel.router"),
    "unknown-fidelity": (["network.fidelity=packet"], "network.fidelity"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_user_errors_are_one_line(tmp_path, name):
    args, needle = ERRORS[name]
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", "workload.max_requests=5", *args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert json_lines(res.stdout) == []


def test_malformed_trace_names_its_line(tmp_path, bad_trace):
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", f"workload.path={bad_trace}")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "line 3" in lines[0] and "BADFILE.csv" in lines[0]


def test_missing_trace_file_is_one_line(tmp_path):
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", f"workload.path={tmp_path / 'nope.csv'}")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_unknown_preset_reports_hydra_message(tmp_path):
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", "hardware=nosuch")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    first = next(ln for ln in res.stderr.splitlines() if ln.strip())
    assert "hardware/nosuch" in first or first.startswith("error:")
    assert json_lines(res.stdout) == []


@pytest.mark.slow
def test_full_default_run_completes_every_request(tmp_path):
    run_dir = tmp_path / "run"
    res = sim(f"hydra.run.dir={run_dir}", "output.progress=never", timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    check_summary(summary)
    assert summary["requests"]["total"] == 8819
    assert summary["requests"]["completed"] == 8819
    assert summary["requests"]["rejected"] == 0
    req = pq.read_table(run_dir / "requests.parquet")
    assert req.num_rows == 8819
    assert set(req.column("status").to_pylist()) == {"completed"}


# Bad values that currently escape as Python exceptions (a traceback) instead of one line.
TRACEBACK_BUGS = {
    "seed-not-int": ["seed=abc"],                                       # int() in parse_config
    "seed-negative": ["workload=synthetic", "seed=-1"],                 # numpy SeedSequence
    "workload-seed-gone": ["workload=synthetic", "workload.seed=3"],    # one root seed
    "hardware-field-not-number": ["hardware.sm_count=abc"],
    "engine-field-not-number": ["engine.kernels_per_layer=abc"],
}


@pytest.mark.parametrize("name", list(TRACEBACK_BUGS))
def test_bad_value_types_are_one_line_errors(tmp_path, name):
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", "workload.max_requests=3", "output.progress=never",
              *TRACEBACK_BUGS[name])
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-500:]


def test_sweep_records_an_infeasible_point_and_goes_on(tmp_path):
    """In a -m sweep a plan that does not fit writes error.txt in its job dir; the others run."""
    sweep = tmp_path / "sweep"
    res = sim("-m", "parallel.tp=1,8", "workload.max_requests=5", f"hydra.sweep.dir={sweep}",
              "output.progress=never")
    assert "Traceback" not in res.stderr
    assert res.returncode == 0, res.stderr
    assert "does not fit" in (sweep / "0" / "error.txt").read_text()
    assert not (sweep / "0" / "summary.json").exists()
    summary = json.loads((sweep / "1" / "summary.json").read_text())
    assert summary["config"]["tp"] == 8 and summary["requests"]["completed"] == 5
    assert any(ln.startswith("error: ") and "does not fit" in ln for ln in res.stderr.splitlines())


def test_a_run_directory_never_mixes_two_runs(tmp_path):
    """A second run into a directory holding a run's outputs is refused with one line; with
    output.overwrite=true it replaces them (no stale table left beside the new config)."""
    run_dir = tmp_path / "run"
    args = (f"hydra.run.dir={run_dir}", "workload.max_requests=3", "output.progress=never")
    assert sim(*args).returncode == 0
    first = (run_dir / "summary.json").read_text()
    res = sim(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "holds another run's outputs" in lines[0] and "output.overwrite=true" in lines[0]
    assert (run_dir / "summary.json").read_text() == first           # untouched
    res = sim(*args, "output.overwrite=true", "output.write_parquet=false")
    assert res.returncode == 0, res.stderr[-500:]
    assert not (run_dir / "steps.parquet").exists() and not (run_dir / "requests.parquet").exists()
    assert (run_dir / "summary.json").exists()


def test_runs_started_together_get_their_own_default_directories():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [sys.executable, "-m", "sim", "workload.max_requests=2", "output.progress=never"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    dirs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-500:]
        dirs.append(Path(json_lines(out)[-1]["run_dir"]))
    try:
        assert dirs[0] != dirs[1]
        assert all((d / "summary.json").exists() for d in dirs)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_a_run_reads_as_text_and_its_progress_stops_at_100_percent(tmp_path):
    """Default: the JSON line on stdout, a readable summary on stderr, and (stderr not a
    terminal) one progress line per tenth of the requests, the last at 100 %;
    output.format=table: only the summary, on stdout."""
    res = sim(f"hydra.run.dir={tmp_path / 'a'}", "workload.max_requests=40", "output.progress=auto")
    assert res.returncode == 0, res.stderr[-500:]
    assert json_lines(res.stdout)[-1]["requests"]["completed"] == 40
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("[sim]")]
    assert len(progress) == 10 and "100% of 40 requests done" in progress[-1]
    shares = [int(ln.split("%")[0].split()[-1]) for ln in progress]
    assert shares == sorted(shares) and max(shares) == 100
    for label in ("requests  40 completed", "TTFT ", "TPOT ", "E2E ", "tokens/s", "per million output tokens",
                  "J per output token", "wall "):
        assert label in res.stderr, label
    res = sim(f"hydra.run.dir={tmp_path / 'b'}", "workload.max_requests=40", "output.progress=never",
              "output.format=table")
    assert res.returncode == 0 and not json_lines(res.stdout)
    assert "TTFT " in res.stdout and " ms" in res.stdout and str(tmp_path / "b") in res.stdout
    assert sim(f"hydra.run.dir={tmp_path / 'c'}", "output.format=xml").returncode == 2


def test_rows_a_reader_changes_are_counted_and_named(tmp_path):
    """Zero lengths read as 1 and absolute times rebased to the first arrival are counted in
    summary.json (workload.clamped_rows, workload.rebased_s) and named in one warning line."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n1700000000.5,100,0\n1700000001.0,0,20\n"
                     "1700000002.0,50,10\n")
    res = sim(f"hydra.run.dir={tmp_path / 'run'}", f"workload.path={trace}", "output.progress=never",
              "output.format=table")
    assert res.returncode == 0, res.stderr[-500:]
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [
        "warning: 2 rows of t.csv had 0 prompt or output tokens and were read as 1 (summary.json "
        "workload.clamped_rows)"]
    w = json.loads((tmp_path / "run" / "summary.json").read_text())["workload"]
    assert w == {"source": "t.csv", "requests": 3, "clamped_rows": 2, "rebased_s": 1700000000.5}
    arrivals = pq.read_table(tmp_path / "run" / "requests.parquet").column("arrival_s").to_pylist()
    assert arrivals == [0.0, 0.5, 1.5]


def test_a_mapping_override_replaces_the_mapping_it_names():
    """``key={...}`` sets exactly that mapping (Hydra alone would merge it into the default's
    keys and refuse a distribution with other parameters)."""
    from sim.config.compose import compose_config

    cfg = compose_config(["workload=synthetic", "workload.prompt_tokens={dist: uniform, low: 1, high: 900}"])
    assert cfg["workload"]["prompt_tokens"] == {"dist": "uniform", "low": 1, "high": 900}
    cfg = compose_config(["workload=synthetic", "workload.output_tokens=7", "workload.prompt_tokens.median=50"])
    assert cfg["workload"]["output_tokens"] == 7 and cfg["workload"]["prompt_tokens"]["median"] == 50
