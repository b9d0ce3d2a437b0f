"""The analytic model is the simulator's own cost model: a steady decode batch in the
discrete-event simulator takes exactly the per-token latency the analytic model predicts."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.build import analytic_model
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.cost.analytic import Split, pareto_mask, valid_splits


def _steady(tmp_path, overrides, batch=16, prompt=1024, output=64):
    trace = tmp_path / "steady.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + f"0.0,{prompt},{output}\n" * batch)
    cfg = compose_config([*overrides, f"workload.path={trace}", "output.progress=never",
                          f"scheduler.max_tokens_per_step={batch * prompt}", f"scheduler.max_batch_size={batch}"])
    run(cfg, tmp_path / "run")
    return cfg, pq.read_table(tmp_path / "run" / "requests.parquet").to_pydict()


@pytest.mark.parametrize("overrides,split", [
    (["parallel.tp=8"], Split(8)),
    (["topology=multi_node_ib", "parallel.tp=16"], Split(16)),
    (["topology=multi_node_ib", "parallel.tp=16", "parallel.tp_cols=2"], Split(16, 1, 2)),
    (["model=llama3_8b", "parallel.tp=1", "engine=pytorch_cudagraph"], Split(1)),
])
def test_des_steady_batch_matches_analytic(tmp_path, overrides, split):
    batch, prompt, output = 16, 1024, 64
    cfg, req = _steady(tmp_path, overrides, batch, prompt, output)
    tpot = np.array(req["tpot_s"])
    assert np.allclose(tpot, tpot[0])  # one batch from first token to finish
    model = analytic_model(parse_config(cfg))
    # acceptance: within 2% of the analytic per-token latency at the mean context
    mid = model.decode(split, [batch], context_len=prompt + (output - 2) / 2)["latency_s"][0]
    assert tpot[0] == pytest.approx(mid, rel=0.02)
    # and exactly the mean over the contexts the decode steps actually had
    exact = np.mean([model.decode(split, [batch], context_len=prompt + k)["latency_s"][0] for k in range(output - 1)])
    assert tpot[0] == pytest.approx(exact, rel=1e-9)


def test_vectorised_equals_scalar_prediction():
    cfg = parse_config(compose_config([]))
    model = analytic_model(cfg)
    batches = np.array([1, 3, 17, 64, 255])
    vec = model.decode(Split(8), batches, context_len=2048)
    pred = model.predictor(Split(8))
    from sim.spec.batch import BatchShape
    for i, b in enumerate(batches):
        assert vec["latency_s"][i] == pytest.approx(pred.step(BatchShape.decode(int(b), 2048)).total_s, rel=1e-12)


def test_memory_fit_and_cost():
    cfg = parse_config(compose_config([]))
    model = analytic_model(cfg)
    r = model.decode(Split(2), np.array([1.0]), context_len=0)
    assert not r["fits"][0]  # 70B bf16 does not fit on two H100s
    r = model.decode(Split(8), np.array([1.0, 4096.0]), context_len=8192)
    assert r["fits"][0] and not r["fits"][1]  # 4096 x 8K-token contexts overflow the KV cache
    # dollars per million tokens = GPUs x price / throughput
    expected = 8 * cfg.hardware.usd_per_hour / 3600 / r["throughput_tok_s"][0] * 1e6
    assert r["usd_per_mtok"][0] == pytest.approx(expected)


def test_pipeline_throughput_is_paced_by_the_busiest_stage():
    """``pp`` micro-batches in flight: throughput is a batch per busiest-stage time, between
    ``batch / latency`` (one in flight) and ``pp x batch / latency`` (perfectly even stages);
    the first stage carries the host's per-step time, so it is the busiest for a server engine."""
    from sim.spec.batch import BatchShape

    for engine in ("optimized", "vllm"):
        cfg = parse_config(compose_config([f"engine={engine}", "parallel.tp=4", "parallel.pp=2"]))
        model = analytic_model(cfg)
        r = model.decode(Split(4, 2), np.array([8.0]), context_len=512)
        pred = model.speculative(Split(4, 2)).target
        shape = BatchShape(8.0, 8.0, 8.0 * 513, 8.0 * 513, 8.0, 8.0)
        busiest = max(pred.stage(shape, s).total_s for s in range(2))
        assert r["throughput_tok_s"][0] == pytest.approx(8 / busiest, rel=1e-9)
        assert 8 / r["latency_s"][0] < r["throughput_tok_s"][0] <= 2 * 8 / r["latency_s"][0]


def test_valid_splits_respect_model_shape():
    cfg = parse_config(compose_config([]))
    splits = valid_splits(cfg, 16)
    assert all(s.gpus == 16 for s in splits)
    assert all(64 % s.tp == 0 for s in splits)
    assert any(s.tp_cols == 2 for s in splits) and any(s.pp == 2 for s in splits)
    assert all(s.tp // s.tp_cols <= 8 for s in splits if s.tp_cols > 1)


def test_pareto_mask():
    speed = np.array([10.0, 20.0, 15.0, 20.0])
    cost = np.array([1.0, 5.0, 6.0, 4.0])
    assert pareto_mask(speed, cost).tolist() == [True, False, False, True]


def test_parts_of_each_batch_size_belong_to_its_own_gamma():
    """With ``num_tokens=auto`` the best gamma changes with the batch size; every point's four
    parts sum to its own pass time (latency x tokens per pass), not another gamma's."""
    cfg = parse_config(compose_config(["speculative=draft", "speculative.num_tokens=auto"]))
    r = analytic_model(cfg).decode(Split(8), np.geomspace(1, 2048, 24))
    assert len(set(r["gamma"].tolist())) > 1
    parts = r["compute_s"] + r["memory_s"] + r["network_s"] + r["fixed_s"]
    assert np.allclose(parts, r["latency_s"] * r["tokens_per_pass"], rtol=1e-12)
