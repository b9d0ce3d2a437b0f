"""Every step the scheduler can form is a query (issue 14): ``sequences`` steps in
``sim.steptime``, ``step`` rows in calibration files, and the shape-family hold-out of
``sim.validate``.

Rules checked: a ``sequences`` step equals the batch shape the scheduler builds for the same
work (a prompt chunk mixed with decodes costs what the simulation charges for that step); the
old ``size``/``phase`` queries are the special cases; a query may set its own weight format;
bad sequences are one line; a calibration ``step`` row is read with its family and weights and
predicted like a query; leaving one shape family out of the fit reports held-out errors and
every parameter's drift.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_sim

from sim.config.compose import compose_config
from sim.build import build_step_model
from sim.errors import ConfigError
from sim.config.parse import load_engine, load_hardware
from sim.policy.batching import SeqWork, _shape
from sim.spec.batch import BatchShape
from sim.tools.calibration.engine_fit import predict as fit_predict
from sim.tools.calibration.engine_fit import read_measurements
from sim.tools.steptime import predict, sequences_batch
from sim.tools.validation.cli import leave_one_family_out, pooled

MIXED = [{"context_len": 1536, "new_tokens": 512, "sampled": 0}] + [{"context_len": 4096, "new_tokens": 1}] * 31


def test_a_sequences_step_is_the_shape_the_scheduler_builds():
    work = [SeqWork(0, 1536, 512, False)] + [SeqWork(i, 4096, 1, True) for i in range(1, 32)]
    assert sequences_batch(MIXED) == _shape(work)
    # the special cases: a decode batch and a prefill
    assert sequences_batch([{"context_len": 1024, "new_tokens": 1}] * 8) == BatchShape.decode(8, 1024)
    assert sequences_batch([{"context_len": 0, "new_tokens": 2048}]) == BatchShape.prefill(2048)


def test_mixed_and_batched_prefill_queries_price_what_the_simulation_charges():
    cfg = compose_config(["parallel.tp=8"])
    rows = predict(cfg, [{"sequences": MIXED},
                         {"sequences": [{"context_len": 0, "new_tokens": n} for n in (100, 700, 1248)]},
                         {"sequences": [{"context_len": 0, "new_tokens": 2048}]}, {"phase": "prefill", "prompt_len": 2048}])
    model = build_step_model(cfg).predictor
    work = [SeqWork(0, 1536, 512, False)] + [SeqWork(i, 4096, 1, True) for i in range(1, 32)]
    assert rows[0]["total_s"] == model.step(_shape(work)).total_s
    assert rows[0]["new_tokens_total"] == 543 and rows[0]["logit_positions"] == 31
    # one prompt of 2,048 tokens and three prompts of 2,048 in all: the matmuls see the same
    # tokens, the batched prompts attend to fewer positions
    assert rows[2]["total_s"] == pytest.approx(rows[3]["total_s"], rel=1e-12)
    assert rows[1]["total_s"] < rows[2]["total_s"] and rows[1]["logit_positions"] == 3


def test_a_query_sets_its_own_weight_format():
    cfg = compose_config(["parallel.tp=8"])
    bf16, fp8 = predict(cfg, [{"sequences": MIXED}, {"sequences": MIXED, "precision.weights": "fp8"}])
    assert fp8["precision_weights"] == "fp8" and bf16["precision_weights"] == "bf16"
    assert fp8["memory_s"] < bf16["memory_s"]


@pytest.mark.parametrize("sequences, needle", [
    ([], "must be a non-empty list"),
    ([{"context_len": 5}], "new_tokens=None must be an integer >= 1"),
    ([{"context_len": -1, "new_tokens": 1}], "context_len=-1 must be an integer >= 0"),
    ([{"new_tokens": 4, "sampled": 5}], "sampled=5 must be an integer from 0 to new_tokens=4"),
    ([{"new_tokens": 4, "colour": 1}], "unknown field(s) ['colour']"),
])
def test_bad_sequences_are_one_line(sequences, needle):
    with pytest.raises(ConfigError, match=None) as exc:
        sequences_batch(sequences)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_takes_sequences_in_yaml_flow_style_and_refuses_mixing_them(tmp_path):
    ok = run_sim("-m", "sim.steptime", "batch.sequences=[{context_len: 0, new_tokens: 256}, {context_len: 4096, new_tokens: 1}]")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["new_tokens_total"] == 257
    bad = run_sim("-m", "sim.steptime", "batch.sequences=[{context_len: 0, new_tokens: 256}]", "batch.size=4")
    assert bad.returncode != 0 and bad.stderr.strip() == "error: batch.sequences gives the whole step; drop ['size']"


def _data(tmp_path: Path) -> Path:
    """The shared calibration rows plus step rows (mixed, batched prefill, an fp8 step)."""
    shared = Path(__file__).resolve().parent / "fixtures" / "h100_pytorch_cudagraph.jsonl"
    rows = shared.read_text()
    extra = [
        {"kind": "step", "mode": "graph", "model": "llama-3.1-8b", "sequences": MIXED, "ms": 30.0},
        {"kind": "step", "mode": "graph", "model": "llama-3.1-8b",
         "sequences": [{"context_len": 0, "new_tokens": n} for n in (128, 512, 900)], "ms": 25.0},
        {"kind": "step", "mode": "graph", "model": "llama-3.1-8b", "weights": "fp8",
         "sequences": [{"context_len": 2048, "new_tokens": 1}] * 16, "ms": 5.0},
    ]
    path = tmp_path / "with_steps.jsonl"
    path.write_text(rows + "".join(json.dumps(r) + "\n" for r in extra))
    return path


def test_step_rows_are_read_with_their_family_and_weights(tmp_path):
    rows = read_measurements(_data(tmp_path))
    steps = [r for r in rows if r.kind == "step"]
    assert [r.family for r in steps] == ["mixed", "prefill", "decode"]
    assert [r.weights for r in steps] == ["bf16", "bf16", "fp8"]
    assert "512 prompt tokens, 31 decodes" in steps[0].label and steps[2].label.endswith("fp8")
    families = {r.family for r in rows}
    assert {"decode", "long_context", "big_batch", "prefill", "gemm", "mixed"} <= families
    hw, eng = load_hardware("h100"), load_engine("pytorch_cudagraph")
    cfg = compose_config(["engine=pytorch_cudagraph", "model=llama3_1_8b", "parallel.tp=1", "precision.weights=fp8"])
    by_query = predict(cfg, [{"sequences": [{"context_len": 2048, "new_tokens": 1}] * 16}])[0]["total_s"]
    assert fit_predict(steps[2], hw, eng) == pytest.approx(by_query, rel=1e-9)


def test_bad_step_rows_are_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"kind": "model", "model": "m", "h": 64, "L": 2, "nh": 4, "nkv": 2, "hd": 16, "ffn": 128, '
                    '"vocab": 256, "params": 1}\n{"kind": "step", "model": "m", "sequences": [{"new_tokens": 0}], "ms": 1}\n')
    with pytest.raises(ConfigError, match="line 2: sequences\\[0\\]"):
        read_measurements(path)
    path.write_text(path.read_text().replace('"new_tokens": 0}]', '"new_tokens": 1}], "weights": "fp9"'))
    with pytest.raises(ConfigError, match="weights='fp9' is not one of"):
        read_measurements(path)


def test_leaving_one_shape_family_out_reports_held_out_error_and_drift(tmp_path):
    held = leave_one_family_out(_data(tmp_path))
    names = {h["held_out"] for h in held}
    assert {"decode", "long_context", "big_batch", "prefill", "mixed"} <= names and "gemm" not in names
    for h in held:
        assert h["rows"] == len(h["held_out_errors"]) >= 1
        assert set(h["drift"]) and h["max_param_drift"] == max(h["drift"].values())
        assert h["held_out_p90_abs_error"] >= h["held_out_median_abs_error"] - 1e-12
    p = pooled(held)
    assert p["held_out_rows"] == sum(h["rows"] for h in held)


def test_one_token_chunks_are_prompt_and_a_bad_query_format_is_one_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"kind": "model", "model": "m", "h": 64, "L": 2, "nh": 4, "nkv": 2, "hd": 16, "ffn": 128, '
                    '"vocab": 256, "params": 1}\n'
                    + json.dumps({"kind": "step", "model": "m", "ms": 1.0, "sequences":
                                  [{"context_len": 0, "new_tokens": 1, "sampled": 0}]
                                  + [{"context_len": 9000, "new_tokens": 1}] * 4}) + "\n"
                    + json.dumps({"kind": "step", "model": "m", "ms": 1.0, "sequences":
                                  [{"context_len": 9000, "new_tokens": 1}] * 4}) + "\n")
    mixed, long = [r for r in read_measurements(path) if r.kind == "step"]
    assert mixed.family == "mixed" and "(1 prompt tokens, 4 decodes)" in mixed.label
    assert long.family == "long_context"
    with pytest.raises(ConfigError, match="must be a weight format name"):
        predict(compose_config([]), [{"sequences": MIXED, "precision.weights": ["fp8"]}])
