"""``python -m sim.steptime``: JSON output, query files, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.config.parse import load_engine, load_hardware, load_model
from sim.cost.step_time import StepTimePredictor
from sim.spec.batch import BatchShape
from sim.spec.precision import Precision

REPO = Path(__file__).resolve().parent.parent
PARTS = ("compute_s", "memory_s", "network_s", "fixed_s")


def steptime(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.steptime", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def ok_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    for r in lines:
        assert set(PARTS) | {"total_s"} <= set(r)
        assert r["total_s"] == pytest.approx(sum(r[k] for k in PARTS), rel=0, abs=1e-12)
        assert all(r[k] >= 0.0 for k in PARTS)
    return lines


class ZeroComm:
    def allreduce_s(self, nbytes: float) -> float:
        return 0.0

    def allgather_s(self, nbytes: float) -> float:
        return 0.0


def test_default_decode_batch1():
    (r,) = ok_lines(steptime("batch.size=1"))
    assert r["model"] == "llama3_70b" and r["hardware"] == "h100" and r["tp"] == 8 and r["pp"] == 1
    assert r["size"] == 1
    assert r["network_s"] > 0.0 and r["memory_s"] > r["compute_s"]
    assert r["tokens_per_step"] == 1
    assert r["time_per_token_s"] == pytest.approx(r["total_s"])
    # total - network is what one GPU holding the tp=8 shard takes alone (no overlap configured)
    local = StepTimePredictor(load_model("llama3_70b"), load_hardware("h100"), load_engine("optimized"), Precision(),
                              tp=8, comm=ZeroComm()).step(BatchShape.decode(1, 1024))
    assert r["total_s"] - r["network_s"] == pytest.approx(local.total_s, rel=1e-12)
    for k in ("compute_s", "memory_s", "fixed_s"):
        assert r[k] == pytest.approx(getattr(local, k), rel=1e-12)


def test_prefill_is_compute_bound_and_slower():
    (d,) = ok_lines(steptime("batch.size=1"))
    (p,) = ok_lines(steptime("batch.phase=prefill", "batch.prompt_len=2048"))
    assert p["phase"] == "prefill" and p["prompt_len"] == 2048
    assert p["compute_s"] > p["memory_s"]
    assert p["total_s"] > 3 * d["total_s"]
    assert p["tokens_per_step"] == 1


def test_queries_file_one_line_per_query(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"size": 1}\n\n{"size": 8, "context_len": 4096}\n{"phase": "prefill", "prompt_len": 512}\n')
    lines = ok_lines(steptime(f"queries={q}", "model=llama3_8b", "parallel.tp=1", "engine=pytorch_cudagraph"))
    assert len(lines) == 3
    assert lines[0]["size"] == 1 and lines[1]["context_len"] == 4096 and lines[2]["phase"] == "prefill"
    assert all(r["network_s"] == 0.0 and r["tp"] == 1 for r in lines)
    assert lines[1]["total_s"] > lines[0]["total_s"]
    assert lines[1]["tokens_per_step"] == 8


def test_network_overlap_and_latency_scale_overrides():
    (base,) = ok_lines(steptime())
    (ov,) = ok_lines(steptime("engine.network_overlap=0.5"))
    assert ov["network_s"] == pytest.approx(0.5 * base["network_s"], rel=1e-12)
    assert ov["total_s"] - ov["network_s"] == pytest.approx(base["total_s"] - base["network_s"], rel=1e-12)
    (lat,) = ok_lines(steptime("network.latency_scale=0.5"))
    # decode collectives are latency-bound: halving every latency almost halves the network time
    assert 0.5 * base["network_s"] < lat["network_s"] < 0.56 * base["network_s"]
    (bw,) = ok_lines(steptime("network.bandwidth_scale=10"))
    assert 0.9 * base["network_s"] < bw["network_s"] < base["network_s"]


def test_pipeline_parallel_adds_stage_sends():
    (r,) = ok_lines(steptime("parallel.tp=4", "parallel.pp=2"))
    assert r["tp"] == 4 and r["pp"] == 2
    assert r["network_s"] > 0.0


@pytest.mark.parametrize("args,needle", [
    (["parallel.tp=3"], "parallel.tp=3"),
    (["hardware=nosuch"], "nosuch"),
    (["batch.size=-1"], "batch.size"),
    (["model=llama3_405b", "parallel.tp=1"], "does not fit"),
    (["batch.bogus=1"], "bogus"),
    (["batch.size=1.5"], "batch.size"),
    (["batch.phase=verify"], "batch.phase"),
    (["hardware=a100", "precision.weights=fp8"], "fp8"),
    (["queries=/nonexistent/q.jsonl"], "queries"),
    (["parallel.tp=16"], "parallel needs 16 GPUs"),
    (["notakeyvalue"], "KEY=VALUE"),
])
def test_errors_are_one_line(args, needle):
    proc = steptime(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert proc.stdout.strip() == ""


def test_bad_queries_line_is_one_line_error(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"size": 1}\n[1, 2]\n')
    proc = steptime(f"queries={q}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "line 2" in lines[0]


def test_non_object_hf_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text("[1, 2, 3]")
    proc = steptime("model=hf_config", f"model.path={cfg}", "parallel.tp=1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_cli_field_override_on_top_of_hf_config(tmp_path):
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    (full,) = ok_lines(steptime("model=hf_config", f"model.path={p}", "parallel.tp=1"))
    (small,) = ok_lines(steptime("model=hf_config", f"model.path={p}", "model.num_hidden_layers=4", "parallel.tp=1"))
    assert small["total_s"] < 0.5 * full["total_s"]
