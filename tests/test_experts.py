"""Mixture of experts as deployed: DeepSeek-V3's shape (latent attention, shared expert, dense
first layers) and expert parallelism (``parallel.ep``), issue 13.

Rules checked: the presets' parameter counts and KV bytes match their model cards; the
expected expert traffic (busiest GPU's share, experts touched, GPUs a token reaches) against
closed forms and a Monte Carlo draw; an expert-parallel GPU holds whole attention and 1/ep of
the routed experts; the all-to-all costs what its one-shot schedule says under both network
fidelities; on two nodes, halving the per-message latency lowers DeepSeek-V3's batch-1 TPOT
more than ten times the bandwidth does, while at a large batch the all-to-all's bytes matter
more than its latency; a skewed router slows the step; bad expert settings are one line.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import simpy
from helpers import run_sim

from sim.app import evaluate
from sim.build import build_step_model, make_fabric
from sim.config.compose import compose_config
from sim.config.parse import load_model, parse_config
from sim.cost.experts import ExpertLoad
from sim.network.collective import CollectiveNetwork
from sim.network.message import MessageNetwork
from sim.spec.batch import BatchShape

DS = ["model=deepseek_v3", "precision.weights=fp8", "topology=multi_node_ib", "parallel.tp=16"]


def test_deepseek_v3_matches_its_model_card():
    m = load_model("deepseek_v3")
    # arXiv:2412.19437: 671B total parameters, 37B activated per token (MTP module excluded)
    assert m.params / 1e9 == pytest.approx(671.0, abs=0.5)
    assert (m.active_params_per_token + m.embedding_params) / 1e9 == pytest.approx(37.0, abs=0.6)
    # MLA caches the 512-wide latent and the 64-wide rotary key per layer: 61 x 576 x 2 bytes
    assert m.kv_bytes_per_token(2.0) == 61 * 576 * 2 == 70272
    assert m.moe_layers == 58 and m.expert_ffn == 2048
    q = load_model("qwen3_moe")
    assert q.params / 1e9 == pytest.approx(235.09, abs=0.01) and q.moe_layers == 94 and q.expert_ffn == 1536


def _hypergeometric_ranks(experts: int, k: int, ranks: int) -> float:
    """Expected ranks hit by k distinct experts drawn uniformly (exact)."""
    per = experts // ranks
    return ranks * (1.0 - math.comb(experts - per, k) / math.comb(experts, k))


@pytest.mark.parametrize("experts,k,ranks", [(256, 8, 16), (256, 8, 8), (128, 8, 8), (64, 6, 4), (8, 2, 8)])
def test_uniform_routing_against_closed_forms(experts, k, ranks):
    load = ExpertLoad(experts, k, ranks)
    assert load.share == pytest.approx(1 / ranks) and load.imbalance == pytest.approx(1.0)
    assert load.busiest_tokens(100) == pytest.approx(100 * k / ranks)
    # k distinct experts of E: the exact hypergeometric count
    assert load.ranks_per_token == pytest.approx(_hypergeometric_ranks(experts, k, ranks), rel=1e-12)
    per = experts // ranks
    assert load.busiest_touched(1) == pytest.approx(per * k / experts)
    assert load.busiest_touched(10**6) == pytest.approx(per)
    grid = np.array([1.0, 7.0, 64.0, 4096.0])
    assert load.busiest_touched(grid) == pytest.approx([load.busiest_touched(float(t)) for t in grid])


def test_skewed_routing_concentrates_load_as_a_monte_carlo_draw_does():
    experts, k, ranks, skew = 256, 8, 16, 1.0
    load = ExpertLoad(experts, k, ranks, skew)
    assert load.imbalance > 1.5 and ExpertLoad(experts, k, ranks, 0.5).imbalance < load.imbalance
    rng = np.random.default_rng(0)
    tokens = 4000
    picks = rng.random((tokens, experts)) < load.pick[None, :]     # independent picks, as modelled
    per_rank = np.bincount(np.nonzero(picks)[1] % ranks, minlength=ranks) / picks.sum()
    assert per_rank.max() == pytest.approx(load.share, rel=0.05)
    hit = np.zeros((tokens, ranks), dtype=bool)
    for r in range(ranks):
        hit[:, r] = picks[:, r::ranks].any(axis=1)
    assert hit.sum(axis=1).mean() == pytest.approx(load.ranks_per_token, rel=0.02)


def test_an_expert_parallel_gpu_holds_whole_attention_and_its_experts():
    ep = build_step_model(compose_config([*DS, "parallel.ep=16"])).predictor
    tp = build_step_model(compose_config(DS)).predictor
    m = ep.model
    fp8 = 1.0
    attention = m.num_hidden_layers * (m.attention_params_per_layer + m.norm_params_per_layer)
    dense = m.first_k_dense_replace * m.dense_mlp_params
    experts = m.moe_layers * ((256 / 16 + 1) * m.expert_params + m.hidden_size * 256)
    expected = (attention + dense + experts + m.embedding_params + m.lm_head_params + m.hidden_size) * fp8
    assert ep.weight_bytes_per_gpu(0) == pytest.approx(expected, rel=1e-12)
    # tensor parallel: everything split 16 ways but the replicated norms
    assert tp.weight_bytes_per_gpu(0) == pytest.approx(m.params / 16, rel=0.01)
    # data-parallel attention caches each GPU's own sequences' latents: 1/16 of the replica's
    # tokens per GPU, where tensor-parallel MLA replicates the latent on every rank
    assert ep.kv_bytes_per_token_per_gpu(0) * 16 == tp.kv_bytes_per_token_per_gpu(0) == 61 * 576 * 2


@pytest.mark.parametrize("nbytes", [512.0, 64e3, 8e6])
def test_alltoall_costs_its_schedule_under_both_fidelities(nbytes):
    cfg = parse_config(compose_config(DS))
    fabric = make_fabric(cfg)
    ranks = list(fabric.gpus)[:16]
    priced = fabric.group(ranks).alltoall_s(nbytes)
    times = []
    for cls in (CollectiveNetwork, MessageNetwork):
        env = simpy.Environment()
        env.run(cls(env, fabric).collective("alltoall", ranks, nbytes))
        times.append(env.now)
    assert times[0] == pytest.approx(priced, rel=1e-12)
    # message by message, the 8 ranks of a node share their NVSwitch ports and NICs' rails
    assert times[1] == pytest.approx(priced, rel=0.25)
    # alpha-beta: a small all-to-all is latency (2 PCIe + 1 InfiniBand hop + software), a large one bytes
    hop = fabric.pair(ranks[0], ranks[8])
    if nbytes <= 512:
        assert priced < 2 * (hop.latency_s + fabric.software_s)
    if nbytes >= 8e6:
        assert priced > 8 * (nbytes / 16) / hop.bandwidth_Bps


def _tpot_ms(*overrides: str) -> float:
    """Batch-1 decode: one request alone, its TPOT."""
    summary, _ = evaluate(compose_config([*DS, "parallel.ep=16", "workload=synthetic", "workload.max_requests=1",
                                          "workload.prompt_tokens={dist: fixed, value: 1024}",
                                          "workload.output_tokens={dist: fixed, value: 64}", "output.progress=never",
                                          *overrides]))
    return summary["tpot_s"]["mean"] * 1e3


def test_deepseek_v3_on_two_nodes_batch_one_latency_beats_bandwidth():
    base = _tpot_ms()
    halved_latency = _tpot_ms("network.latency_scale=0.5")
    tenfold_bandwidth = _tpot_ms("network.bandwidth_scale=10")
    assert halved_latency < tenfold_bandwidth < base
    assert base - halved_latency > 5 * (base - tenfold_bandwidth)


def test_at_large_batch_the_alltoall_bytes_matter():
    def step(*overrides: str, batch: int) -> float:
        model = build_step_model(compose_config([*DS, "parallel.ep=16", *overrides]))
        b = BatchShape.from_sequences([2048] * batch, [1] * batch)
        return model.predictor.stage(b).total_s
    for batch, latency_wins in ((1, True), (1024, False)):
        base = step(batch=batch)
        by_latency = base - step("network.latency_scale=0.5", batch=batch)
        by_bandwidth = base - step("network.bandwidth_scale=10", batch=batch)
        assert (by_latency > by_bandwidth) == latency_wins, (batch, by_latency, by_bandwidth)


def test_a_skewed_router_slows_compute_bound_steps():
    def step(skew: float, batch: BatchShape):
        model = build_step_model(compose_config([*DS, "parallel.ep=16", f"parallel.ep_skew={skew}"]))
        return model.predictor.stage(batch)
    prefill = BatchShape.from_sequences([0] * 16, [2048] * 16)
    times = [step(skew, prefill) for skew in (0.0, 0.5, 1.0)]
    assert times[0].compute_s < times[1].compute_s < times[2].compute_s      # the busiest GPU's experts
    assert times[0].total_s < times[1].total_s < times[2].total_s
    # memory-bound decode: popular experts draw the tokens, fewer distinct experts are read
    decode = BatchShape.from_sequences([1024] * 512, [1] * 512)
    assert step(2.0, decode).memory_s < step(0.0, decode).memory_s


def test_expert_parallel_runs_compose_with_disaggregation_and_message_fidelity(tmp_path):
    over = [*DS, "parallel.ep=16", "workload.max_requests=3", "debug.check_invariants=true", "output.progress=never"]
    collective, _ = evaluate(compose_config(over))
    message, _ = evaluate(compose_config([*over, "network.fidelity=message"]))
    assert collective["requests"]["completed"] == message["requests"]["completed"] == 3
    assert message["sim"]["link_hops"] > 0
    assert message["tpot_s"]["mean"] == pytest.approx(collective["tpot_s"]["mean"], rel=0.1)
    pools, _ = evaluate(compose_config([*over, "disagg=pools", "disagg.prefill.tp=16", "disagg.decode.tp=16"]))
    assert pools["requests"]["completed"] == 3 and pools["kv_transfer"]["bytes"] > 0


@pytest.mark.parametrize("overrides, message", [
    (["model=deepseek_v3", "precision.weights=fp8", "topology=multi_node_ib", "parallel.tp=16", "parallel.ep=8"],
     "parallel.ep=8 must be 1 or equal parallel.tp=16"),
    (["parallel.ep=8"], "of a mixture-of-experts model (llama3_70b)"),
    (["model=qwen3_moe", "parallel.ep=8", "parallel.ep_skew=-1"], "parallel.ep_skew=-1 must be a number between 0"),
    (["model=deepseek_v3", "model.kv_lora_rank=512", "model.v_head_dim=0"], "needs qk_nope_head_dim"),
    (["model=qwen3_moe", "parallel.ep=8", "parallel.ep_attention=sp"], "parallel.ep_attention='sp' is not one of"),
])
def test_bad_expert_settings_are_one_line(tmp_path, overrides, message):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path}", "workload.max_requests=3", *overrides)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-1500:]


def test_expert_parallelism_with_tensor_parallel_attention():
    """vLLM's TP + expert parallel: attention, dense layers and shared experts split as under
    tensor parallelism (same KV per GPU, same two all-reduces per layer), routed experts
    whole, 1/ep per GPU."""
    tp = build_step_model(compose_config(DS)).predictor
    ep = build_step_model(compose_config([*DS, "parallel.ep=16", "parallel.ep_attention=tp"])).predictor
    m = ep.model
    assert ep.kv_bytes_per_token_per_gpu(0) == tp.kv_bytes_per_token_per_gpu(0)
    b = BatchShape.from_sequences([2048] * 64, [1] * 64)
    assert ep.stage(b).network_s == tp.stage(b).network_s          # the same all-reduces
    attention_etc = tp.weight_bytes_per_gpu(0) - (m.moe_layers * m.mlp_params_per_layer / 16)   # fp8: 1 byte each
    experts = m.moe_layers * ((256 / 16 + 1 / 16) * m.expert_params + m.hidden_size * 256)
    assert ep.weight_bytes_per_gpu(0) == pytest.approx(attention_etc + experts, rel=1e-9)
    # the busiest GPU's whole experts: at batch 1 a token's 8 experts fall on ~6 of 16 GPUs,
    # the one holding the most reads the most; never more than its 16 experts
    assert ep.experts.busiest_touched(1.0) <= 16
