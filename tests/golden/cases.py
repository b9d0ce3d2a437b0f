"""Golden runs: every command on small settings, with the outputs it wrote captured once.

``python tests/golden/cases.py`` (re)captures them into ``tests/golden/data/``; the test
``tests/test_golden.py`` runs the same commands and requires identical Parquet tables
(column names, types and every value bit for bit), identical ``summary.json`` and identical
JSON lines, wall-clock figures and paths aside. They were first captured before the
restructuring of issue 10 and hold the behaviour of every command across it; recapture them
only on purpose, for a change that means to change results, and say so in the commit.

History: issue 11 (one event per step, fast-forwarded decode spans, link free-at times,
streamed steps) moved floats by at most 1e-9 relative (most not at all) and added
``requests.unfinished``; verified against the issue-10 captures, then recaptured. Issue 15
(faults) added the ``restarts`` column of requests.parquet (0 without faults) and
``requests.failed`` (0); every other value checked identical to the previous captures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
SHARED_STEPS = ROOT.parent / "shared" / "calibration" / "h100_pytorch_cudagraph.jsonl"
NCCL_LOGS = ROOT / "tests" / "fixtures" / "nccl"

# Keys whose values are wall-clock measurements, the simulator's own bookkeeping (the
# ``sim`` block: wall time, events scheduled) or machine paths, not simulated results.
VOLATILE = {"wall_s", "events_per_s", "run_dir", "path", "written", "sim"}

RUN = ["output.progress=never"]


@dataclass(frozen=True)
class Case:
    """One command; ``{out}`` in an argument is replaced by the case's output directory."""

    name: str
    commands: tuple[tuple[str, ...], ...]
    files: tuple[str, ...] = ()                 # Parquet / JSON / text files under {out}
    stdout_json: bool = True                    # the last stdout line of the last command is JSON
    needs: tuple[Path, ...] = field(default=())  # inputs outside the repository
    # > 0: floats equal within this relative tolerance instead of bit for bit. Only for
    # least-squares fits (scipy's optimizers move the last digits between releases: the
    # leave-one-out refits of sim.validate differ by ~2e-5 between scipy 1.16 and 1.17)
    fit_rel_tol: float = 0.0


def _sim(name: str, *args: str) -> Case:
    return Case(name, (("-m", "sim", *RUN, *args, "hydra.run.dir={out}"),),
                ("requests.parquet", "steps.parquet", "summary.json"))


CASES: tuple[Case, ...] = (
    _sim("run_default", "workload.max_requests=1000"),
    _sim("run_pp_dp", "model=llama3_8b", "parallel.tp=2", "parallel.pp=2", "parallel.dp=2",
         "workload.max_requests=300", "workload.rate_scale=4"),
    _sim("run_round_robin_fp8", "model=llama3_8b", "parallel.tp=1", "parallel.dp=4", "parallel.router=round_robin",
         "precision.weights=fp8", "precision.kv_cache=fp8", "workload.max_requests=300", "workload.rate_scale=2"),
    _sim("run_spec_draft", "speculative=draft", "workload.max_requests=150"),
    _sim("run_spec_self_auto", "speculative=self", "speculative.num_tokens=auto", "speculative.acceptance_dist=beta",
         "workload.max_requests=150"),
    _sim("run_spec_separate", "speculative=draft", "speculative.placement=separate", "parallel.tp=4",
         "workload.max_requests=100"),
    _sim("run_fleet", "fleet=[{hardware: h100, replicas: 2, tp: 4}, {hardware: a100, replicas: 1, tp: 8}]",
         "workload.max_requests=300", "workload.rate_scale=2"),
    _sim("run_kv_pressure", "workload=synthetic", "model=llama3_8b", "engine.gpu_memory_utilization=0.23",
         "parallel.tp=1", "workload.rate_per_s=50", "workload.max_requests=60", "workload.prompt_tokens=400",
         "workload.output_tokens=300"),
    _sim("run_multi_node_scaled", "topology=multi_node_ib", "parallel.tp=16", "network.latency_scale=0.5",
         "network.bandwidth_scale=2", "workload.max_requests=100"),
    _sim("run_nccl_fit_links", "topology=h100_ib_nccl_fit", "parallel.tp=16", "network.latency_scale=2",
         "workload.max_requests=100"),
    _sim("run_tp2d", "topology=multi_node_ib", "parallel.tp=16", "parallel.tp_cols=2", "workload.max_requests=100"),
    _sim("run_message", "network.fidelity=message", "model=llama3_8b", "parallel.tp=4", "parallel.tp_cols=2",
         "workload=synthetic", "workload.max_requests=4", "workload.prompt_tokens=64", "workload.output_tokens=6"),
    _sim("run_message_pp", "network.fidelity=message", "model=llama3_8b", "parallel.tp=2", "parallel.pp=2",
         "topology=multi_node_ib", "topology.gpus_per_node=2", "workload=synthetic", "workload.max_requests=3",
         "workload.prompt_tokens=64", "workload.output_tokens=5"),
    Case("sweep_tp", (("-m", "sim", "-m", *RUN, "parallel.tp=2,4,8", "model=llama3_8b", "workload.max_requests=100",
                       "hydra.sweep.dir={out}"),
                      ("-m", "sim.collect", "{out}")), ("sweep.parquet",), stdout_json=False),
    Case("steptime_decode", (("-m", "sim.steptime", "batch.size=1", "batch.context_len=4096"),)),
    Case("steptime_prefill_pp", (("-m", "sim.steptime", "batch.phase=prefill", "batch.prompt_len=2048",
                                  "parallel.tp=4", "parallel.pp=2"),)),
    Case("steptime_spec", (("-m", "sim.steptime", "speculative=self", "speculative.num_tokens=auto",
                            "topology=multi_node_ib", "parallel.tp=16", "network.latency_scale=0.5"),)),
    Case("frontier", (("-m", "sim.frontier", "model=llama3_8b", "search.max_gpus=16", "search.batch_points=40",
                       "out={out}"),), ("frontier.parquet",)),
    Case("frontier_spec", (("-m", "sim.frontier", "speculative=draft", "speculative.num_tokens=auto",
                            "search.max_gpus=32", "search.batch_points=30", "out={out}"),), ("frontier.parquet",)),
    Case("validate", (("-m", "sim.validate", f"data={SHARED_STEPS}", "out={out}"),),
         ("validation.parquet", "validation.md", "published.parquet", "published.md"), needs=(SHARED_STEPS,),
         fit_rel_tol=1e-3),
    Case("procure", (("-m", "sim.procure", "workload.rate_scale=4", "workload.max_requests=300",
                      "slo.ttft_p99_s=5", "slo.tpot_p99_s=0.1", "search.hardware=[h100]", "search.tp=[2,4,8]",
                      "search.max_batch_size=[256]", "search.max_tokens_per_step=[2048]", "sensitivity.seeds=1",
                      "hydra.run.dir={out}"),), ("procure.parquet", "sensitivity.parquet", "procure.md")),
    Case("calibrate_steps", (("-m", "sim.calibrate", f"data={SHARED_STEPS}", "name=golden", "out={out}"),),
         ("golden_cudagraph.yaml", "golden_eager.yaml"), stdout_json=False, needs=(SHARED_STEPS,), fit_rel_tol=1e-3),
    Case("calibrate_nccl", (("-m", "sim.calibrate", "format=nccl-tests", "name=golden",
                             f"data={NCCL_LOGS / 'h100_sxm_1node_allreduce_ring_together.txt'}", "out={out}"),),
         ("golden.yaml",), stdout_json=False, fit_rel_tol=1e-3),
)


def run_case(case: Case, out: Path) -> str:
    """Run ``case`` with outputs in ``out``; its last command's stdout."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    stdout = ""
    for cmd in case.commands:
        args = [a.replace("{out}", str(out)) for a in cmd]
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{case.name}: {' '.join(args)} exited {res.returncode}: {res.stderr[-2000:]}")
        stdout = res.stdout
    return stdout


def stable_json(value):
    """A JSON value without its wall-clock and path entries."""
    if isinstance(value, dict):
        return {k: stable_json(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable_json(v) for v in value]
    return value


def stdout_record(case: Case, stdout: str) -> str:
    """What of the command's stdout is held: its last JSON line (stable part), or the text
    with the output directory replaced."""
    if case.stdout_json:
        return json.dumps(stable_json(json.loads(stdout.strip().splitlines()[-1])), indent=1, sort_keys=True)
    return stdout


def normalised(text: str, out: Path) -> str:
    """``text`` with the machine's paths (output directory, repository, its parent) named."""
    return text.replace(str(out), "{out}").replace(str(ROOT.parent), "{parent}")


TEXT_SUFFIXES = (".md", ".yaml", ".txt")


def capture(names: list[str] | None = None) -> None:
    import tempfile

    for case in CASES:
        if names and case.name not in names:
            continue
        dest = DATA / case.name
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            stdout = run_case(case, out)
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            for f in case.files:
                if f == "summary.json":
                    summary = stable_json(json.loads((out / f).read_text()))
                    (dest / f).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
                elif f.endswith(TEXT_SUFFIXES):
                    (dest / f).write_text(normalised((out / f).read_text(), out))
                else:
                    shutil.copy(out / f, dest / f)
            (dest / "stdout.txt").write_text(normalised(stdout_record(case, stdout), out))
        print(f"captured {case.name}")


if __name__ == "__main__":
    capture(sys.argv[1:] or None)
