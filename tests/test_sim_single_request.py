"""Analytic check: one request alone takes exactly the predictor's prefill + decode steps.

Rule: a request of ``P`` prompt tokens (``P <= max_tokens_per_step``) and ``n`` output tokens,
alone in the cluster and arriving at t=0, has

* ``ttft = predictor.step(prefill of P tokens sampling one)``,
* ``e2e = ttft + sum_{k=1}^{n-1} predictor.step(decode at context P+k-1)``,

where ``predictor`` is the replica's :class:`~sim.step_time.StepTimePredictor` (with
pipeline parallelism its ``step`` is one micro-batch through every stage plus the
stage-to-stage sends). Relative error < 1e-9. A prompt longer than the token budget is
prefilled in chunks (chunked prefill, only the last chunk samples) or in one step alone
(chunked prefill off).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.build import build_cluster
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.spec.batch import BatchShape

REL = 1e-9


def one_request(tmp_path: Path, prompt: int, output: int, overrides: list[str]):
    trace = tmp_path / "one.csv"
    trace.write_text(f"arrival_s,prompt_tokens,output_tokens\n0.0,{prompt},{output}\n")
    cfg = compose_config([f"workload.path={trace}", "output.progress=never", *overrides])
    summary = run(cfg, tmp_path / "out")
    req = pq.read_table(tmp_path / "out" / "requests.parquet").to_pylist()
    steps = pq.read_table(tmp_path / "out" / "steps.parquet").to_pydict()
    assert len(req) == 1 and req[0]["status"] == "completed"
    predictor = build_cluster(parse_config(cfg)).replicas[0].predictor
    return cfg, summary, req[0], steps, predictor


def analytic(predictor, chunks: list[int], output: int) -> tuple[float, float, list[float]]:
    """(ttft, e2e, step times) for prefill ``chunks`` (last one samples) then decodes."""
    times = []
    ctx = 0
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        times.append(predictor.step(BatchShape.from_sequences([ctx], [c], [1 if last else 0])).total_s)
        ctx += c
    prompt = ctx
    ttft = math.fsum(times)
    for k in range(1, output):
        times.append(predictor.step(BatchShape.from_sequences([prompt + k - 1], [1])).total_s)
    return ttft, math.fsum(times), times


CASES = {
    "8b-tp1": ["model=llama3_8b", "parallel.tp=1"],
    "70b-tp8": ["model=llama3_70b", "parallel.tp=8"],
    "70b-tp4-pp2": ["model=llama3_70b", "parallel.tp=4", "parallel.pp=2"],
    "70b-tp8-pp2-ib": ["model=llama3_70b", "parallel.tp=8", "parallel.pp=2", "topology=multi_node_ib"],
    "8b-tp1-pp4": ["model=llama3_8b", "parallel.tp=1", "parallel.pp=4"],
    "8b-tp2-dp2": ["model=llama3_8b", "parallel.tp=2", "parallel.dp=2"],
}


@pytest.mark.parametrize("prompt,output", [(1, 1), (100, 2), (1000, 17), (2048, 5)])
@pytest.mark.parametrize("case", list(CASES))
def test_single_request_latency_is_sum_of_predicted_steps(tmp_path, case, prompt, output):
    cfg, summary, req, steps, predictor = one_request(tmp_path, prompt, output, CASES[case])
    assert prompt <= cfg["scheduler"]["max_tokens_per_step"]
    ttft, e2e, times = analytic(predictor, [prompt], output)
    assert req["arrival_s"] == 0.0
    assert req["ttft_s"] == pytest.approx(ttft, rel=REL)
    assert req["e2e_s"] == pytest.approx(e2e, rel=REL)
    if output > 1:
        assert req["tpot_s"] == pytest.approx((e2e - ttft) / (output - 1), rel=1e-7)
    else:
        assert math.isnan(req["tpot_s"])
    # one step per token, back to back, each as long as predicted
    assert len(steps["step"]) == output
    np.testing.assert_allclose(steps["duration_s"], times, rtol=REL)
    assert steps["prefill_tokens"] == [prompt] + [0] * (output - 1)
    assert steps["decode_tokens"] == [0] + [1] * (output - 1)
    assert steps["batch_size"] == [1] * output
    assert steps["start_s"][0] == 0.0
    np.testing.assert_allclose(np.asarray(steps["start_s"][1:]),
                               np.cumsum(steps["duration_s"])[:-1], rtol=REL)
    # the summary reports this one request
    assert summary["ttft_s"]["p50"] == pytest.approx(ttft, rel=REL)
    assert summary["e2e_s"]["mean"] == pytest.approx(e2e, rel=REL)
    assert summary["throughput"]["output_tokens"] == output
    assert summary["throughput"]["makespan_s"] == pytest.approx(e2e, rel=REL)


def test_pipeline_step_includes_stage_sends(tmp_path):
    """With pp=2 the predicted step is both stages plus one activation send."""
    cfg, summary, req, steps, predictor = one_request(tmp_path, 64, 2, CASES["70b-tp4-pp2"])
    b = BatchShape.from_sequences([64], [1])
    stages = predictor.stage(b, 0).total_s + predictor.stage(b, 1).total_s
    send = predictor.pp_send_s(0, predictor.activation_bytes(b))
    assert send > 0
    assert predictor.step(b).total_s == pytest.approx(stages + send, rel=1e-12)
    assert steps["duration_s"][1] == pytest.approx(stages + send, rel=REL)


def test_single_request_message_fidelity_matches_predictor(tmp_path):
    """Message-level network, no contention: the same latency as the alpha-beta predictor."""
    cfg, summary, req, steps, predictor = one_request(
        tmp_path, 300, 4, ["model=llama3_8b", "parallel.tp=4", "network.fidelity=message"])
    ttft, e2e, _ = analytic(predictor, [300], 4)
    assert req["ttft_s"] == pytest.approx(ttft, rel=REL)
    assert req["e2e_s"] == pytest.approx(e2e, rel=REL)


def test_long_prompt_is_prefilled_in_chunks(tmp_path):
    """P > max_tokens_per_step with chunked prefill: chunks of the budget, the last samples."""
    cfg, summary, req, steps, predictor = one_request(
        tmp_path, 3000, 3, ["model=llama3_8b", "parallel.tp=1", "scheduler.max_tokens_per_step=1024"])
    ttft, e2e, times = analytic(predictor, [1024, 1024, 952], 3)
    assert req["ttft_s"] == pytest.approx(ttft, rel=REL)
    assert req["e2e_s"] == pytest.approx(e2e, rel=REL)
    assert steps["prefill_tokens"] == [1024, 1024, 952, 0, 0]


def test_long_prompt_without_chunking_runs_whole(tmp_path):
    """P > max_tokens_per_step without chunked prefill: one step with the whole prompt."""
    cfg, summary, req, steps, predictor = one_request(
        tmp_path, 3000, 3, ["model=llama3_8b", "parallel.tp=1", "scheduler.max_tokens_per_step=1024",
                            "scheduler.chunked_prefill=false"])
    ttft, e2e, times = analytic(predictor, [3000], 3)
    assert req["ttft_s"] == pytest.approx(ttft, rel=REL)
    assert req["e2e_s"] == pytest.approx(e2e, rel=REL)
    assert steps["prefill_tokens"] == [3000, 0, 0]


def test_synthetic_single_request(tmp_path):
    """workload=synthetic with max_requests=1 gives the same closed form."""
    cfg = compose_config(["workload=synthetic", "workload.max_requests=1", "workload.prompt_tokens=777",
                          "workload.output_tokens=9", "model=llama3_8b", "parallel.tp=2",
                          "output.progress=never"])
    summary = run(cfg, tmp_path)
    req = pq.read_table(tmp_path / "requests.parquet").to_pylist()[0]
    predictor = build_cluster(parse_config(cfg)).replicas[0].predictor
    ttft, e2e, _ = analytic(predictor, [777], 9)
    assert req["ttft_s"] == pytest.approx(ttft, rel=REL)
    assert req["e2e_s"] == pytest.approx(e2e, rel=REL)
    assert summary["requests"]["completed"] == 1
