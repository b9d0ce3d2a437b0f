"""Determinism: the same config and seed give identical tables; another seed gives others.

Rule: a run is a pure function of its composed config. Two runs of one config (in one
process, or in two processes with different hash seeds) write equal ``requests.parquet`` and
``steps.parquet`` tables (``pyarrow.Table.equals``); a different root ``seed`` of a
synthetic workload gives different tables, and ``workload.seed`` is not a key (one seed drives every stream).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.config.compose import compose_config

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = {
    "synthetic-dp2-gamma": ["workload=synthetic", "workload.max_requests=60", "model=llama3_8b", "parallel.tp=2",
                            "parallel.dp=2", "workload.arrival=gamma", "workload.rate_per_s=20"],
    "kv-pressure": ["workload=synthetic", "workload.max_requests=40", "model=llama3_8b", "parallel.tp=1",
                    "engine.gpu_memory_utilization=0.23", "workload.rate_per_s=50",
                    "workload.prompt_tokens=400", "workload.output_tokens=200"],
    "azure-first-100": ["workload.max_requests=100"],
    "message-pp2": ["workload=synthetic", "workload.max_requests=4", "model=llama3_2_1b", "parallel.tp=2",
                    "parallel.pp=2", "network.fidelity=message", "workload.prompt_tokens=64",
                    "workload.output_tokens=6", "workload.rate_per_s=100"],
}


def tables(overrides: list[str], out: Path):
    cfg = compose_config([*overrides, "output.progress=never"])
    summary = run(cfg, out)
    return pq.read_table(out / "requests.parquet"), pq.read_table(out / "steps.parquet"), summary


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_config_same_tables(tmp_path, name):
    r1, s1, sum1 = tables(CONFIGS[name], tmp_path / "a")
    r2, s2, sum2 = tables(CONFIGS[name], tmp_path / "b")
    assert r1.num_rows > 0 and s1.num_rows > 0
    assert r1.equals(r2)
    assert s1.equals(s2)
    for key in ("requests", "ttft_s", "tpot_s", "e2e_s", "throughput", "time_breakdown", "cost", "memory"):
        assert sum1[key] == sum2[key]
    assert sum1["sim"]["events"] == sum2["sim"]["events"]


def test_kv_pressure_config_really_preempts(tmp_path):
    """The kv-pressure determinism case exercises preemption (so its equality means something)."""
    _, _, summary = tables(CONFIGS["kv-pressure"], tmp_path)
    assert summary["requests"]["preemptions"] > 0


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_different_seed_different_tables(tmp_path, arrival):
    base = ["workload=synthetic", "workload.max_requests=40", "model=llama3_8b", "parallel.tp=1",
            f"workload.arrival={arrival}"]
    r1, s1, _ = tables([*base, "seed=1"], tmp_path / "a")
    r2, s2, _ = tables([*base, "seed=2"], tmp_path / "b")
    assert not r1.equals(r2)
    assert not s1.equals(s2)
    assert r1.column("arrival_s").to_pylist() != r2.column("arrival_s").to_pylist()
    assert r1.column("prompt_tokens").to_pylist() != r2.column("prompt_tokens").to_pylist()


def test_seed_is_what_matters_not_the_run_dir(tmp_path):
    """Reusing a seed after another run gives the first run's tables back."""
    base = ["workload=synthetic", "workload.max_requests=30", "model=llama3_8b", "parallel.tp=1"]
    r1, s1, _ = tables([*base, "seed=7"], tmp_path / "a")
    tables([*base, "seed=8"], tmp_path / "b")
    r3, s3, _ = tables([*base, "seed=7"], tmp_path / "c")
    assert r1.equals(r3) and s1.equals(s3)


def test_identical_across_processes_and_hash_seeds(tmp_path):
    """Two interpreter processes with different PYTHONHASHSEED write equal tables."""
    code = (
        "import sys; from sim.config.compose import compose_config; from sim.app import run; "
        "run(compose_config(['workload=synthetic','workload.max_requests=50','model=llama3_8b',"
        "'parallel.tp=2','parallel.dp=2','output.progress=never','engine.gpu_memory_utilization=0.3',"
        "'workload.rate_per_s=30']), sys.argv[1])"
    )
    for i, hash_seed in enumerate(("0", "12345")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=120)
    for name in ("requests.parquet", "steps.parquet"):
        assert pq.read_table(tmp_path / "0" / name).equals(pq.read_table(tmp_path / "1" / name))
    a = json.loads((tmp_path / "0" / "summary.json").read_text())
    b = json.loads((tmp_path / "1" / "summary.json").read_text())
    assert a["requests"] == b["requests"] and a["ttft_s"] == b["ttft_s"]


def test_one_root_seed_drives_every_stream(tmp_path):
    """``seed`` alone moves the acceptance draws of speculative decoding and the bootstrap of a
    trace (the bundled trace itself has no randomness); the same seed gives the same tables."""
    spec = ["workload.max_requests=30", "model=llama3_8b", "parallel.tp=2", "speculative=self",
            "speculative.acceptance_dist=beta"]
    a, _, _ = tables([*spec, "seed=1"], tmp_path / "a")
    b, _, _ = tables([*spec, "seed=2"], tmp_path / "b")
    c, _, _ = tables([*spec, "seed=1"], tmp_path / "c")
    assert a.equals(c)
    assert a.column("prompt_tokens").equals(b.column("prompt_tokens"))        # the trace is the trace
    assert a.column("decode_passes").to_pylist() != b.column("decode_passes").to_pylist()
    boot = ["workload.max_requests=30", "model=llama3_8b", "parallel.tp=1", "workload.resample=true"]
    d, _, _ = tables([*boot, "seed=1"], tmp_path / "d")
    e, _, _ = tables([*boot, "seed=2"], tmp_path / "e")
    assert d.column("arrival_s").equals(e.column("arrival_s"))                # arrival times kept
    assert d.column("prompt_tokens").to_pylist() != e.column("prompt_tokens").to_pylist()
