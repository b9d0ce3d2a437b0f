"""StepTimePredictor and soft_roofline: physics properties of the per-step cost model."""
from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from sim.config.parse import load_engine, load_hardware, load_model
from sim.cost.fabric import Fabric
from sim.cost.step_time import StepTime, StepTimePredictor, soft_roofline, split_layers
from sim.errors import ConfigError
from sim.spec.batch import BatchShape
from sim.spec.engine import EngineProfile
from sim.spec.precision import Precision

H100 = load_hardware("h100")
A100 = load_hardware("a100")
ENGINE = load_engine("pytorch_cudagraph")


@functools.lru_cache(maxsize=None)
def _fabric(engine: EngineProfile) -> Fabric:
    return Fabric(topologies.hgx_node(8), engine)


def make(model: str, tp: int = 1, pp: int = 1, precision: Precision = Precision(), engine: EngineProfile = ENGINE,
         hardware=H100) -> StepTimePredictor:
    m = load_model(model)
    comm = None
    if tp > 1:
        fab = _fabric(engine)
        comm = fab.group(list(fab.gpus)[:tp])
    return StepTimePredictor(m, hardware, engine, precision, tp=tp, pp=pp, comm=comm)


class ZeroComm:
    def allreduce_s(self, nbytes: float) -> float:
        return 0.0

    def allgather_s(self, nbytes: float) -> float:
        return 0.0


# ------------------------------------------------------------------------ soft roofline
# step-part times: exactly zero or at least a picosecond (subnormal floats are not times)
times = st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=10.0))
sharp = st.floats(min_value=1.0, max_value=12.0)


@settings(max_examples=300, deadline=None)
@given(times, times, sharp)
def test_soft_roofline_parts_sum_to_p_norm(tc, tm, p):
    c, m = soft_roofline(tc, tm, p)
    assert c >= 0.0 and m >= 0.0
    if tc == 0.0 and tm == 0.0:
        assert (c, m) == (0.0, 0.0)
        return
    hi = max(tc, tm)
    expected = hi * ((tc / hi) ** p + (tm / hi) ** p) ** (1.0 / p)
    if min(tc, tm) > 1e-6:  # direct formula is safe from underflow here
        assert expected == pytest.approx((tc ** p + tm ** p) ** (1.0 / p), rel=1e-12)
    assert c + m == pytest.approx(expected, rel=1e-12)
    assert c + m >= hi * (1 - 1e-12)
    assert c + m <= (tc + tm) * (1 + 1e-12)
    # the slower side takes the larger share
    if tc > tm:
        assert c >= m
    elif tm > tc:
        assert m >= c


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-6, max_value=10.0), st.floats(min_value=1e-6, max_value=10.0),
       st.floats(min_value=1.0, max_value=6.0))
def test_soft_roofline_decreases_with_sharpness_towards_max(tc, tm, p):
    t_p = sum(soft_roofline(tc, tm, p))
    t_2p = sum(soft_roofline(tc, tm, 2 * p))
    t_inf = sum(soft_roofline(tc, tm, 2000.0))
    assert t_2p <= t_p * (1 + 1e-12)
    assert t_inf == pytest.approx(max(tc, tm), rel=1e-3)


def test_soft_roofline_special_cases():
    assert soft_roofline(0.0, 0.0, 3.0) == (0.0, 0.0)
    assert soft_roofline(2.0, 0.0, 3.0) == (2.0, 0.0)
    assert soft_roofline(0.0, 5.0, 3.0) == (0.0, 5.0)
    c, m = soft_roofline(3.0, 4.0, 2.0)           # Euclidean: 5
    assert c + m == pytest.approx(5.0)
    c, m = soft_roofline(3.0, 4.0, 1.0)           # p = 1: no overlap, shares are the inputs
    assert (c, m) == (pytest.approx(3.0), pytest.approx(4.0))
    c, m = soft_roofline(1.0, 1.0, 3.0)
    assert c == pytest.approx(m) and c + m == pytest.approx(2 ** (1 / 3))


# ---------------------------------------------------------------------------- StepTime
def test_step_time_parts_sum_and_add():
    a = StepTime(1.0, 2.0, 3.0, 4.0)
    b = StepTime(0.5, 0.25, 0.125, 0.0625)
    assert a.total_s == 10.0
    s = a + b
    assert (s.compute_s, s.memory_s, s.network_s, s.fixed_s) == (1.5, 2.25, 3.125, 4.0625)
    d = a.as_dict()
    assert set(d) == {"total_s", "compute_s", "memory_s", "network_s", "fixed_s"}
    assert d["total_s"] == d["compute_s"] + d["memory_s"] + d["network_s"] + d["fixed_s"]


@pytest.mark.parametrize("batch", [BatchShape.decode(1, 1024), BatchShape.decode(64, 4096, 4), BatchShape.prefill(2048)])
def test_predicted_parts_sum_to_total(batch):
    t = make("llama3_70b", tp=8).step(batch)
    assert min(t.compute_s, t.memory_s, t.network_s, t.fixed_s) >= 0.0
    assert t.network_s > 0.0
    assert t.total_s == pytest.approx(t.compute_s + t.memory_s + t.network_s + t.fixed_s, rel=1e-15)


def test_split_layers():
    assert split_layers(80, 1) == [80]
    assert split_layers(80, 3) == [27, 27, 26]
    assert split_layers(126, 4) == [32, 32, 31, 31]
    assert sum(split_layers(57, 8)) == 57


# ------------------------------------------------------------------ regime (roofline)
def test_decode_batch1_is_memory_bound():
    t = make("llama3_8b").stage(BatchShape.decode(1, 1024))
    assert t.memory_s > 100 * t.compute_s
    assert t.network_s == 0.0
    # streaming ~16 GB of weights at ~0.86 x 3.35 TB/s: about 5.6 ms
    w = make("llama3_8b").weight_bytes_per_gpu()
    assert t.memory_s == pytest.approx(w / (H100.hbm_bandwidth_Bps * ENGINE.hbm_efficiency), rel=0.05)


def test_prefill_4096_is_compute_bound():
    t = make("llama3_8b").stage(BatchShape.prefill(4096))
    assert t.compute_s > t.memory_s
    # at least the linear FLOPs at the fitted efficiency
    m = load_model("llama3_8b")
    linear = 2.0 * m.active_params_per_token * 4096 / (H100.peak_flops("bf16") * ENGINE.compute_efficiency)
    assert t.compute_s > 0.95 * linear


def test_matmul_crossover_between_64_and_1024_tokens():
    p = make("llama3_8b")
    c64, m64 = p._matmul(64, 4096, 28672)
    c1k, m1k = p._matmul(1024, 4096, 28672)
    assert m64 > c64
    assert c1k > m1k


# ------------------------------------------------------------------- monotonicity
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 256), st.integers(0, 30000), st.integers(1, 30000))
def test_more_context_takes_longer(b, ctx, extra):
    p = make("llama3_8b")
    t0 = p.step(BatchShape.decode(b, ctx)).total_s
    t1 = p.step(BatchShape.decode(b, ctx + extra)).total_s
    assert t1 > t0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.integers(1, 512), st.integers(0, 8192))
def test_bigger_batch_takes_longer(b, extra, ctx):
    p = make("llama3_70b", tp=8)
    t0 = p.step(BatchShape.decode(b, ctx)).total_s
    t1 = p.step(BatchShape.decode(b + extra, ctx)).total_s
    assert t1 > t0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16000), st.integers(1, 16000))
def test_longer_prompt_takes_longer(p_len, extra):
    p = make("llama3_8b")
    assert p.step(BatchShape.prefill(p_len + extra)).total_s > p.step(BatchShape.prefill(p_len)).total_s


def test_speculative_verify_costs_little_more_than_one_token():
    p = make("llama3_8b")
    t1 = p.step(BatchShape.decode(1, 1024, 1)).total_s
    t5 = p.step(BatchShape.decode(1, 1024, 5)).total_s
    assert t1 < t5 < 1.1 * t1


# -------------------------------------------------------------------------- precision
def test_fp8_weights_halve_weight_bytes_and_decode_memory():
    bf = make("llama3_70b", tp=8)
    f8 = make("llama3_70b", tp=8, precision=Precision(weights="fp8"))
    assert f8.weight_bytes_per_gpu() == pytest.approx(0.5 * bf.weight_bytes_per_gpu(), rel=1e-12)
    b = BatchShape.decode(1, 0)
    ratio = f8.stage(b).memory_s / bf.stage(b).memory_s
    assert 0.5 <= ratio < 0.52
    # with a 1K context the (bf16) KV cache and activations keep it a little above half
    b = BatchShape.decode(1, 1024)
    ratio = f8.stage(b).memory_s / bf.stage(b).memory_s
    assert 0.5 < ratio < 0.6
    # KV cache format independent of weight format
    assert f8.kv_bytes_per_token_per_gpu() == bf.kv_bytes_per_token_per_gpu()


def test_fp8_kv_cache_halves_kv_bytes():
    bf = make("llama3_70b", tp=8)
    kv8 = make("llama3_70b", tp=8, precision=Precision(kv_cache="fp8"))
    assert kv8.kv_bytes_per_token_per_gpu() == 0.5 * bf.kv_bytes_per_token_per_gpu()
    assert kv8.weight_bytes_per_gpu() == bf.weight_bytes_per_gpu()


def test_int4_weights_use_bf16_compute_fp8_uses_fp8_rate():
    assert Precision(weights="int4").compute_format == "bf16"
    assert Precision(weights="fp8").compute_format == "fp8"
    assert Precision(weights="int8").compute_format == "int8"
    assert Precision(weights="fp8", compute="bf16").compute_format == "bf16"   # explicit override
    b = BatchShape.prefill(4096)
    bf = make("llama3_8b").stage(b)
    i4 = make("llama3_8b", precision=Precision(weights="int4"))
    assert i4._peak == H100.peak_flops("bf16")
    assert i4.stage(b).compute_s == pytest.approx(bf.compute_s, rel=0.01)
    assert i4.weight_bytes_per_gpu() == pytest.approx(0.25 * make("llama3_8b").weight_bytes_per_gpu())
    f8 = make("llama3_8b", precision=Precision(weights="fp8")).stage(b)
    # linear layers at twice the rate; attention stays at the bf16 rate
    assert 0.5 < f8.compute_s / bf.compute_s < 0.65


def test_hardware_lacking_format_is_config_error():
    with pytest.raises(ConfigError) as e:
        make("llama3_8b", hardware=A100, precision=Precision(weights="fp8"))
    assert "fp8" in str(e.value) and "a100" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        make("llama3_8b", hardware=H100, precision=Precision(weights="fp4"))   # Hopper has no FP4
    # what the chip does have works
    assert make("llama3_8b", hardware=A100, precision=Precision(weights="int8"))._peak == 624e12
    assert make("llama3_8b", hardware=H100, precision=Precision(weights="int4"))._peak == H100.peak_flops("bf16")


@pytest.mark.parametrize("kw", [{"weights": "fp6"}, {"kv_cache": "fp4"}, {"activations": "fp8"},
                                {"compute": "int4x"}])
def test_precision_rejects_unknown_formats(kw):
    with pytest.raises(ConfigError) as e:
        Precision(**kw)
    assert f"precision.{next(iter(kw))}" in str(e.value)


# ------------------------------------------------------------------ tensor parallelism
@pytest.mark.parametrize("model", ["llama3_70b", "llama3_8b", "mixtral_8x22b"])
def test_weight_bytes_per_gpu_halve_when_tp_doubles(model):
    w = {tp: make(model, tp=tp).weight_bytes_per_gpu() for tp in (1, 2, 4, 8)}
    for tp in (1, 2, 4):
        assert w[2 * tp] / w[tp] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("model", ["llama3_70b", "llama3_2_1b", "mixtral_8x22b"])
def test_tp1_weights_equal_model_params(model):
    m = load_model(model)
    assert make(model).weight_bytes_per_gpu() == pytest.approx(m.params * 2.0, rel=1e-12)


def test_pipeline_stages_hold_all_weights_once():
    m = load_model("llama3_70b")
    p = make("llama3_70b", pp=4)
    assert p.stage_layers == [20, 20, 20, 20]
    assert sum(p.weight_bytes_per_gpu(s) for s in range(4)) == pytest.approx(2.0 * m.params, rel=1e-12)
    # embedding on the first stage, LM head on the last
    assert p.weight_bytes_per_gpu(0) > p.weight_bytes_per_gpu(1)
    assert p.weight_bytes_per_gpu(3) > p.weight_bytes_per_gpu(1)
    # tied embeddings: the last stage keeps its own copy of the matrix
    t = make("llama3_2_1b", pp=2)
    one = load_model("llama3_2_1b")
    total = sum(t.weight_bytes_per_gpu(s) for s in range(2))
    assert total == pytest.approx(2.0 * (one.params + one.embedding_params), rel=1e-12)


def test_kv_per_gpu_shards_and_replicates_kv_heads():
    full = load_model("llama3_8b").kv_bytes_per_token()
    assert make("llama3_8b").kv_bytes_per_token_per_gpu() == full
    assert make("llama3_8b", tp=8).kv_bytes_per_token_per_gpu() == full / 8
    # 8 KV heads over 16 ranks: each rank keeps one (replicated) head
    fab = Fabric(topologies.hgx_node(16), ENGINE)
    p16 = StepTimePredictor(load_model("llama3_8b"), H100, ENGINE, Precision(), tp=16,
                            comm=fab.group(list(fab.gpus)))
    assert p16.kv_bytes_per_token_per_gpu() == full / 8


def test_weight_bytes_count_replicated_kv_heads():
    m = load_model("llama3_8b")
    fab = Fabric(topologies.hgx_node(16), ENGINE)
    p = StepTimePredictor(m, H100, ENGINE, Precision(), tp=16, comm=fab.group(list(fab.gpus)))
    per_layer_attn = m.hidden_size * (p.heads_per_gpu * m.head_dim + 2 * p.kv_heads_per_gpu * m.head_dim) \
        + p.heads_per_gpu * m.head_dim * m.hidden_size
    per_layer = per_layer_attn + m.mlp_params_per_layer / 16 + m.norm_params_per_layer
    expected = 2.0 * (m.num_hidden_layers * per_layer + m.embedding_params / 16 + m.lm_head_params / 16
                      + m.hidden_size)
    assert p.weight_bytes_per_gpu() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("tp", [3, 5, 7, 128])
def test_tp_must_divide_heads(tp):
    m = load_model("llama3_70b")
    fab = Fabric(topologies.hgx_node(8), ENGINE)
    with pytest.raises(ConfigError) as e:
        StepTimePredictor(m, H100, ENGINE, Precision(), tp=tp, comm=fab.group(list(fab.gpus)[:2]))
    msg = str(e.value)
    assert f"parallel.tp={tp}" in msg and "\n" not in msg


@pytest.mark.parametrize("pp", [0, 81])
def test_pp_range(pp):
    with pytest.raises(ConfigError) as e:
        make("llama3_70b", pp=pp)
    assert f"parallel.pp={pp}" in str(e.value)


def test_tp_without_comm_is_config_error():
    with pytest.raises(ConfigError):
        StepTimePredictor(load_model("llama3_8b"), H100, ENGINE, Precision(), tp=2)


def test_network_is_the_sum_of_the_step_collectives():
    p = make("llama3_70b", tp=8)
    m, g = p.model, p.comm[0]["tp"]
    b = BatchShape.decode(4, 1024)
    t = p.stage(b)
    act = 4 * m.hidden_size * 2.0
    expected = (2 * m.num_hidden_layers + 1) * g.allreduce_s(act) + g.allgather_s(4 * m.vocab_size / 8 * 2.0)
    assert t.network_s == pytest.approx(expected, rel=1e-12)
    # collectives do not overlap: local time is unchanged by the network
    local = StepTimePredictor(m, H100, ENGINE, Precision(), tp=8, comm=ZeroComm()).stage(b)
    assert local.network_s == 0.0
    assert t.total_s - t.network_s == pytest.approx(local.total_s, rel=1e-12)


def test_network_overlap_scales_network_time():
    from dataclasses import replace
    b = BatchShape.decode(1, 1024)
    base = make("llama3_70b", tp=8).stage(b)
    half = make("llama3_70b", tp=8, engine=replace(ENGINE, network_overlap=0.25)).stage(b)
    assert half.network_s == pytest.approx(0.75 * base.network_s, rel=1e-12)
    assert half.total_s - half.network_s == pytest.approx(base.total_s - base.network_s, rel=1e-12)


def test_eager_mode_is_host_launch_bound_for_small_steps():
    eager = load_engine("pytorch_eager")
    p = make("llama3_2_1b", engine=eager)
    t = p.stage(BatchShape.decode(1, 1024))
    kernels = 16 * eager.kernels_per_layer + eager.kernels_per_step
    assert t.total_s == pytest.approx(kernels * eager.host_launch_us * 1e-6, rel=1e-9)
    # a large prefill is GPU-bound: same time as with CUDA graphs
    big = BatchShape.prefill(8192)
    assert p.stage(big).total_s == pytest.approx(make("llama3_2_1b").stage(big).total_s, rel=1e-12)


# ----------------------------------------------------------------------------- MoE
def _expert_touches(p: StepTimePredictor, batch: BatchShape) -> list[float]:
    """Number of experts whose weights each MoE matmul streams (spy on _matmul)."""
    m = p.model
    ffn = m.intermediate_size // p.tp
    seen: list[float] = []
    orig = p._matmul

    def spy(tokens, k, n, weight_elems=None, flops=None):
        if weight_elems is not None:
            seen.append(weight_elems / (k * n))
        return orig(tokens, k, n, weight_elems, flops)

    p._matmul = spy  # type: ignore[method-assign]
    try:
        p.stage(batch)
    finally:
        del p._matmul
    assert len(seen) == 2 and ffn > 0
    return seen


def test_moe_decode_reads_only_routed_experts():
    p = make("mixtral_8x22b", tp=8)
    assert _expert_touches(p, BatchShape.decode(1, 1024)) == [pytest.approx(2.0)] * 2
    t4 = _expert_touches(p, BatchShape.decode(4, 1024))[0]
    assert t4 == pytest.approx(8 * (1 - 0.75 ** 4))
    assert _expert_touches(p, BatchShape.decode(256, 1024))[0] > 7.999


def test_moe_memory_time_black_box():
    eng = EngineProfile(elementwise_bytes_per_hidden=0.0)
    p = make("mixtral_8x22b", tp=8, engine=eng)
    m = p.model
    w = p.weight_bytes_per_gpu()
    experts = m.num_hidden_layers * m.num_local_experts * m.expert_params / 8 * 2.0
    bw = H100.hbm_bandwidth_Bps * eng.hbm_efficiency
    # batch 1: all weights except 6 of 8 experts per layer
    t1 = p.stage(BatchShape.decode(1, 0))
    assert t1.memory_s * bw == pytest.approx(w - 0.75 * experts, rel=0.01)
    # batch 256: essentially every expert
    t256 = p.stage(BatchShape.decode(256, 0))
    assert (t256.memory_s + t256.compute_s) * bw > 0.97 * w
    assert t256.memory_s > 3 * t1.memory_s
