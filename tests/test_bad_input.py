"""Every command answers bad input with one line and a non-zero exit.

Rule: ``error: <what> <what is allowed>`` on stderr (a data file: its name and line), exit
code 2, no traceback, nothing else on stderr; each case names a part of that line it must
contain. Cases cover ``sim`` (config groups, values, unknown keys with and without ``+``,
traces, run directories, sweeps), ``sim.steptime``, ``sim.frontier``, ``sim.procure``,
``sim.calibrate``, ``sim.validate`` and ``sim.collect``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FILES = {
    "binary.csv": bytes(range(256)) * 4,
    "zero_header.csv": b"",
    "bad_count.csv": b"arrival_s,prompt_tokens,output_tokens\n0,abc,5\n",
    "negative.csv": b"arrival_s,prompt_tokens,output_tokens\n0,10,-5\n",
    "huge.csv": b"arrival_s,prompt_tokens,output_tokens\n0,99999999999999999999999,5\n",
    "backwards.csv": b"arrival_s,prompt_tokens,output_tokens\n5,10,5\nnan,10,5\n",
    "azure_bad_time.csv": b"TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n",
    "bad.jsonl": b"{not json\n",
    "garbage.jsonl": bytes(range(128, 256)),
    "neg_time.jsonl": b'{"kind": "gemm_sweep", "M": 1, "K": 2, "N": 3, "ms": -1}\n',
    "not_object.jsonl": b"[1, 2]\n",
    "nccl.log": b"this is not an nccl-tests log\n",
    "profile_header.csv": b"t,m\n0,1\n10,1\n",
    "profile_negative.csv": b"time_s,multiplier\n0,1\n10,-2\n",
    "profile_backwards.csv": b"time_s,multiplier\n0,1\n10,1\n5,1\n",
    "profile_zero.csv": b"time_s,multiplier\n0,0\n10,0\n",
    "profile_text.csv": b"time_s,multiplier\n0,1\n10,lots\n",
}

SIM = "sim"
# (command, arguments, a part of the error line); {tmp} is a scratch directory with FILES
CASES: list[tuple[str, list[str], str]] = [
    # --- config groups and values ---
    (SIM, ["model=llama9"], "model"),
    (SIM, ["hardware=tpu"], "hardware"),
    (SIM, ["engine=fast"], "engine"),
    (SIM, ["topology=torus"], "topology"),
    (SIM, ["workload=nope"], "workload"),
    (SIM, ["parallel.tp=3"], "parallel.tp=3"),
    (SIM, ["parallel.tp=abc"], "parallel.tp"),
    (SIM, ["parallel.tp=0"], "parallel.tp"),
    (SIM, ["parallel.pp=0"], "parallel.pp"),
    (SIM, ["parallel.pp=1000"], "8000 GPUs"),
    (SIM, ["parallel.dp=-1"], "parallel.dp"),
    (SIM, ["parallel.router=random"], "parallel.router"),
    (SIM, ["parallel.tp_cols=3"], "parallel.tp_cols"),
    (SIM, ["precision.weights=fp3"], "precision.weights"),
    (SIM, ["precision.kv_cache=fp2"], "precision.kv_cache"),
    (SIM, ["network.fidelity=packet"], "network.fidelity"),
    (SIM, ["network.latency_scale=0"], "latency_scale"),
    (SIM, ["network.bandwidth_scale=-2"], "bandwidth_scale"),
    (SIM, ["scheduler.block_size=0"], "block_size"),
    (SIM, ["scheduler.block_size=100000000"], "scheduler.block_size=100000000"),
    (SIM, ["scheduler.max_batch_size=0"], "max_batch_size"),
    (SIM, ["scheduler.max_tokens_per_step=abc"], "max_tokens_per_step"),
    (SIM, ["speculative=self", "speculative.acceptance=1.5"], "acceptance"),
    (SIM, ["speculative=self", "speculative.num_tokens=-1"], "num_tokens"),
    (SIM, ["speculative=self", "speculative.acceptance_dist=normal"], "acceptance_dist"),
    (SIM, ["workload.rate_scale=0"], "workload.rate_scale"),
    (SIM, ["workload.max_requests=0"], "workload.max_requests"),
    (SIM, ["workload.repeat=0"], "workload.repeat"),
    (SIM, ["workload.rate_profile={tmp}/missing.csv"], "workload.rate_profile"),
    (SIM, ["workload.rate_profile={tmp}/profile_header.csv"], "time_s,multiplier"),
    (SIM, ["workload.rate_profile={tmp}/profile_negative.csv"], "multiplier=-2.0 must be >= 0"),
    (SIM, ["workload.rate_profile={tmp}/profile_backwards.csv"], "non-decreasing"),
    (SIM, ["workload.rate_profile={tmp}/profile_zero.csv"], "no request could arrive"),
    (SIM, ["faults=sometimes"], "faults"),
    (SIM, ["faults=mtbf", "faults.gpu_mtbf_hours=-5"], "faults.gpu_mtbf_hours=-5"),
    (SIM, ["faults=mtbf", "faults.recovery=retry"], "faults.recovery='retry'"),
    (SIM, ["faults=mtbf", "disagg=pools"], "faults=mtbf with disagg=pools is not built"),
    (SIM, ["spinup.warmup_s=-1"], "spinup.warmup_s=-1"),
    (SIM, ["workload.rate_profile={tmp}/profile_text.csv"], "multiplier='lots'"),
    (SIM, ["workload=synthetic", "workload.arrival=uniform"], "arrival"),
    (SIM, ["workload=synthetic", "workload.rate_per_s=-1"], "rate_per_s"),
    (SIM, ["workload=synthetic", "workload.prompt_tokens=abc"], "prompt_tokens"),
    (SIM, ["workload=synthetic", "workload.output_tokens={dist: zipf}"], "output_tokens"),
    (SIM, ["workload=synthetic", "workload.output_tokens={dist: quantiles, p: [0, 0.9], values: [1, 9]}"], "output_tokens.p"),
    (SIM, ["seed=abc"], "seed"),
    (SIM, ["seed=-1"], "seed"),
    (SIM, ["output.progress=loud"], "output.progress"),
    (SIM, ["output.format=xml"], "output.format"),
    (SIM, ["sim.max_wall_s=-1"], "max_wall_s"),
    (SIM, ["engine.gpu_memory_utilization=2"], "gpu_memory_utilization"),
    (SIM, ["hardware.sm_count=abc"], "sm_count"),
    (SIM, ["model=llama3_405b", "parallel.tp=1"], "does not fit"),
    (SIM, ["fleet=[{hardware: h100}]"], "fleet[0]"),
    (SIM, ["fleet=[{hardware: h100, replicas: 1, colour: red}]"], "colour"),
    (SIM, ["fleet=[{hardware: tpu, replicas: 1}]"], "tpu"),
    # --- unknown keys, with and without + ---
    (SIM, ["foo=1"], "foo is not a config key"),
    (SIM, ["+foo=1"], "foo=1 is not a config key"),
    (SIM, ["workload.foo=1"], "allowed at workload"),
    (SIM, ["+workload.foo=1"], "foo"),
    (SIM, ["parallel.x.y=1"], "allowed at parallel"),
    (SIM, ["workload.seed=3"], "workload.seed"),
    # --- traces ---
    (SIM, ["workload.path={tmp}/missing.csv"], "missing.csv"),
    (SIM, ["workload.path={tmp}/binary.csv"], "not a text trace"),
    (SIM, ["workload.path={tmp}/zero_header.csv"], "zero_header.csv"),
    (SIM, ["workload.path={tmp}/bad_count.csv"], "bad_count.csv line 2"),
    (SIM, ["workload.path={tmp}/negative.csv"], "negative.csv line 2"),
    (SIM, ["workload.path={tmp}/huge.csv"], "too large"),
    (SIM, ["workload.path={tmp}/backwards.csv"], "backwards.csv"),
    (SIM, ["workload.path={tmp}/azure_bad_time.csv"], "TIMESTAMP"),
    (SIM, ["workload.path={tmp}/bad.jsonl"], "bad.jsonl"),
    (SIM, ["workload.path={tmp}/huge.csv", "workload.format=excel"], "format"),
    # --- run directories and sweeps ---
    (SIM, ["hydra.run.dir=/proc/no/such/dir"], "hydra.run.dir=/proc/no/such/dir cannot be written"),
    (SIM, ["-m", "parallel.tp=2,abc"], "parallel.tp"),
    (SIM, ["-m", "parallel.tp=2,4", "+foo=1,2"], "foo"),
    (SIM, ["-m", "parallel.tp=2", "hydra/launcher=kubernetes"], "hydra/launcher=kubernetes is not a launcher"),
    # --- the other commands ---
    ("sim.steptime", ["batch.size=0"], "batch"),
    ("sim.steptime", ["batch.colour=red"], "colour"),
    ("sim.steptime", ["notkeyvalue"], "KEY=VALUE"),
    ("sim.steptime", ["model=llama9"], "model"),
    ("sim.frontier", ["foo=1"], "foo"),
    ("sim.frontier", ["parallel.tp=abc"], "parallel.tp"),
    ("sim.procure", ["slo.ttft_p99_s=-1"], "slo"),
    ("sim.procure", ["search.hardware=[tpu]"], "tpu"),
    ("sim.procure", ["hydra.run.dir=/proc/no/such/dir"], "cannot be written"),
    ("sim.calibrate", ["data={tmp}/missing.jsonl"], "missing.jsonl"),
    ("sim.calibrate", ["data={tmp}/garbage.jsonl"], "not a text file"),
    ("sim.calibrate", ["data={tmp}/bad.jsonl"], "bad.jsonl line 1"),
    ("sim.calibrate", ["data={tmp}/neg_time.jsonl"], "ms=-1"),
    ("sim.calibrate", ["data={tmp}/not_object.jsonl"], "not a JSON object"),
    ("sim.calibrate", ["nccl={tmp}/nccl.log"], "nccl"),
    ("sim.calibrate", ["colour=red"], "colour"),
    ("sim.validate", ["foo=1"], "foo"),
    ("sim.collect", ["{tmp}/no_sweep"], "does not exist"),
    ("sim.collect", [], "SWEEP_DIR"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    for name, data in FILES.items():
        (d / name).write_bytes(data)
    return d


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    assert {c for c, _, _ in CASES} >= {"sim", "sim.steptime", "sim.frontier", "sim.procure", "sim.calibrate",
                                         "sim.validate", "sim.collect"}


@pytest.mark.parametrize("command,args,expect", CASES, ids=[f"{c}:{' '.join(a)}"[:80] for c, a, _ in CASES])
def test_bad_input_is_one_line(scratch, tmp_path, command, args, expect):
    argv = [a.replace("{tmp}", str(scratch)) for a in args]
    if command in (SIM, "sim.procure") and not any(a.startswith("hydra.") for a in argv):
        argv.append(f"hydra.{'sweep' if '-m' in argv else 'run'}.dir={tmp_path / 'out'}")
    if command == SIM:
        argv += [d for d in ("workload.max_requests=5", "output.progress=never")
                 if not any(a.startswith(d.split("=")[0] + "=") for a in argv)]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, "-m", command, *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-800:])
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-800:]
    assert expect in lines[0], lines[0]
