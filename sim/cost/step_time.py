"""Predicted time of one forward step on one GPU of a replica, split into four parts.

Pure cost model (no SimPy). Per decoder layer the GPU runs, on its tensor-parallel shard:
QKV projection, attention over the KV cache, KV write of the new tokens, output projection,
the (gated or mixture-of-experts) MLP, and norm/residual/rotary elementwise work; the last
pipeline stage adds the LM head on the sampled tokens, the first the embedding lookup.

Each operator is a soft roofline of its arithmetic time (FLOPs / peak x efficiency) and its
memory time (bytes / HBM bandwidth x efficiency); the arithmetic and memory shares of the
operator's time are attributed to ``compute_s`` and ``memory_s``. Kernel launch gaps and
per-step overheads are ``fixed_s``. The step's collectives (two all-reduces per layer under
tensor parallelism, the vocabulary-parallel embedding all-reduce and logits all-gather) are
``network_s``; they do not overlap with compute unless ``engine.network_overlap`` says so,
because each depends on the layer's output. ``total_s - network_s`` is therefore what one
GPU holding that shard would take alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sim.cost.experts import ExpertLoad
from sim.cost.vec import vmax, vwhere
from sim.errors import require
from sim.spec.batch import BatchShape
from sim.spec.engine import EngineProfile
from sim.spec.hardware import HardwareSpec
from sim.spec.model import ModelSpec
from sim.spec.precision import Precision


@dataclass(frozen=True)
class StepTime:
    """One step's wall time in four additive parts (seconds)."""

    compute_s: float = 0.0
    memory_s: float = 0.0
    network_s: float = 0.0
    fixed_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.compute_s + self.memory_s + self.network_s + self.fixed_s

    def scaled(self, k: float) -> "StepTime":
        return StepTime(self.compute_s * k, self.memory_s * k, self.network_s * k, self.fixed_s * k)

    def __add__(self, other: "StepTime") -> "StepTime":
        return StepTime(self.compute_s + other.compute_s, self.memory_s + other.memory_s,
                        self.network_s + other.network_s, self.fixed_s + other.fixed_s)

    def as_dict(self) -> dict[str, float]:
        return {"total_s": self.total_s, "compute_s": self.compute_s, "memory_s": self.memory_s,
                "network_s": self.network_s, "fixed_s": self.fixed_s}


class CollectiveCost(Protocol):
    """Time of the collectives of one tensor-parallel group (see :mod:`sim.cost.collectives`)."""

    def allreduce_s(self, nbytes: float) -> float: ...

    def allgather_s(self, nbytes: float) -> float: ...

    def alltoall_s(self, nbytes: float) -> float: ...


@dataclass(frozen=True)
class Collective:
    """A collective the step issues: ``kind`` in {allreduce, allgather, alltoall}, bytes per rank's buffer.

    ``group`` names which ranks take part: ``tp`` (the whole tensor-parallel group), or under
    2-D tensor parallelism ``rows`` / ``cols`` (every row or column group of the grid at once).
    """

    kind: str
    nbytes: float
    group: str = "tp"


@dataclass(frozen=True)
class StageWork:
    """What one pipeline stage's GPU computes alone, and the collectives it issues, per step."""

    local: StepTime
    layers: int
    per_layer_collectives: tuple[Collective, ...] = ()
    pre_collectives: tuple[Collective, ...] = ()
    post_collectives: tuple[Collective, ...] = ()
    key: tuple | None = None    # (token count, sampled tokens, stage): the same collectives
    collective_layers: int | None = None   # the last layers that issue the per-layer collectives (None: all)

    @property
    def communicating_layers(self) -> int:
        return self.layers if self.collective_layers is None else self.collective_layers

    @property
    def collectives(self) -> list[Collective]:
        """All collectives of the step in issue order."""
        return (list(self.pre_collectives) + list(self.per_layer_collectives) * self.communicating_layers
                + list(self.post_collectives))


class StepPredictor(Protocol):
    """What the simulation asks of a replica's step cost model (:class:`StepTimePredictor`)."""

    tp: int
    pp: int

    def stage_work(self, b: BatchShape, stage: int = 0) -> StageWork: ...

    def network_s(self, work: StageWork, stage: int = 0) -> float: ...

    def activation_bytes(self, b: BatchShape) -> float: ...

    def step(self, b: BatchShape) -> StepTime: ...


def soft_roofline(t_compute, t_memory, sharpness: float):
    """Split ``(t_c^p + t_m^p)^(1/p)`` into arithmetic and memory shares (sum = that time).

    Works on floats and on numpy arrays alike.
    """
    if isinstance(t_compute, np.ndarray) or isinstance(t_memory, np.ndarray):
        hi = np.maximum(np.maximum(t_compute, t_memory), 1e-300)
    else:
        if t_compute <= 0.0 and t_memory <= 0.0:
            return 0.0, 0.0
        hi = max(t_compute, t_memory)
    a, b = (t_compute / hi) ** sharpness, (t_memory / hi) ** sharpness
    total = hi * (a + b) ** (1.0 / sharpness)
    return total * a / (a + b), total * b / (a + b)


def split_layers(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, as even as possible, earlier stages taking the remainder."""
    base, extra = divmod(num_layers, pp)
    return [base + (1 if s < extra else 0) for s in range(pp)]


class StepTimePredictor:
    """Step-time cost model for one replica (``tp`` x ``pp`` GPUs) of a model on a GPU type."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, engine: EngineProfile,
                 precision: Precision, tp: int = 1, pp: int = 1,
                 comm=None, pp_send_s=None, tp_cols: int = 1, ep: int = 1, ep_skew: float = 0.0,
                 ep_attention: str = "dp") -> None:
        """``ep > 1`` (= ``tp``): expert parallelism over the stage's ``tp`` GPUs; each holds
        1/ep of the routed experts whole. ``ep_attention="dp"`` (SGLang's DP attention with
        DeepEP, vLLM's wide EP): attention and dense layers data-parallel among them, each GPU
        running 1/ep of the batch's sequences with whole attention weights, every
        mixture-of-experts layer dispatching its tokens to their experts' GPUs and combining
        the results with two all-to-alls. ``ep_attention="tp"`` (vLLM's TP + expert
        parallel): attention, dense layers and shared experts tensor-parallel as without
        expert parallelism; after the attention all-reduce every GPU holds all tokens, runs
        the ones routed to its experts, and the layer's all-reduce combines the partial
        outputs (the same two all-reduces per layer as tensor parallelism).
        ``ep_skew``: the Zipf exponent of expert popularity (:mod:`sim.cost.experts`)."""
        require(ep == 1 or (ep == tp and model.is_moe and model.num_local_experts % ep == 0),
                f"parallel.ep={ep} must be 1 or equal parallel.tp={tp} (the GPUs the experts spread over) and divide "
                f"model.num_local_experts={model.num_local_experts} of a mixture-of-experts model ({model.name})")
        require(ep_attention in ("dp", "tp"), f"parallel.ep_attention={ep_attention!r} is not one of ['dp', 'tp']")
        if ep == 1 or ep_attention == "tp":
            require(model.num_attention_heads % tp == 0,
                    f"parallel.tp={tp} must divide model.num_attention_heads={model.num_attention_heads} ({model.name})")
            require(model.is_mla or model.num_key_value_heads % tp == 0 or tp % model.num_key_value_heads == 0,
                    f"parallel.tp={tp} and model.num_key_value_heads={model.num_key_value_heads} must divide one another")
            for f in ("intermediate_size", "moe_intermediate_size"):
                require(getattr(model, f) % tp == 0, f"parallel.tp={tp} must divide model.{f}={getattr(model, f)}")
        require(1 <= pp <= model.num_hidden_layers,
                f"parallel.pp={pp} must be between 1 and model.num_hidden_layers={model.num_hidden_layers}")
        require(tp == 1 or comm is not None, "tensor parallelism needs a collective cost model")
        require(tp_cols >= 1 and tp % tp_cols == 0, f"parallel.tp_cols={tp_cols} must divide parallel.tp={tp}")
        self.model, self.hardware, self.engine, self.precision = model, hardware, engine, precision
        self.tp, self.pp, self.tp_cols = tp, pp, tp_cols
        self.ep = ep
        dp_attention = ep > 1 and ep_attention == "dp"
        #: data-parallel attention under expert parallelism: a GPU's share of the batch, whole heads
        self.dp_share = 1.0 / ep if dp_attention else 1.0
        self.shard = 1 if dp_attention else tp    # the split of attention heads, dense MLPs and shared experts
        self.experts = ExpertLoad(model.num_local_experts, model.num_experts_per_tok, ep, ep_skew) if ep > 1 else None
        self.tp_rows = tp // tp_cols
        # Per pipeline stage (stages may sit on different nodes), a mapping from group tag
        # ("tp", and "rows"/"cols" under 2-D TP) to that group's collective cost model.
        stages = list(comm) if isinstance(comm, (list, tuple)) else [comm] * pp
        self.comm = [c if (c is None or isinstance(c, dict)) else {"tp": c} for c in stages]
        self.pp_send_s = pp_send_s
        self.stage_layers = split_layers(model.num_hidden_layers, pp)
        first = np.concatenate([[0], np.cumsum(self.stage_layers)[:-1]]).astype(int)
        #: per stage, its mixture-of-experts layers (the dense first layers come first)
        self.stage_moe_layers = [max(0, n - max(0, model.first_k_dense_replace - int(f))) if model.is_moe else 0
                                 for f, n in zip(first, self.stage_layers)]
        self._matmuls: dict[tuple, tuple] = {}
        self._stage_parts: dict[tuple, tuple] = {}
        self._networks: dict[tuple, float] = {}
        self._peak = hardware.peak_flops(precision.compute_format)
        self._matmul_rate = self._peak * engine.matmul_efficiency(precision.compute_format)  # achieved FLOP/s
        # an fp8/int8/fp4 matmul path with separate activation-quantisation kernels: their
        # kernels per layer, and the bytes they move per matmul input element
        low = precision.compute_format in ("fp8", "int8", "fp4") and engine.low_precision_kernels_per_layer > 0
        self._quant_kernels = engine.low_precision_kernels_per_layer if low else 0.0
        self._quant_bytes = engine.low_precision_bytes_per_input if low else 0.0
        # host time of a step outside the model, paid once (by the first stage): per step, per
        # tensor-parallel worker beyond the first, per sequence
        self._host_step_s = (engine.step_overhead_us + engine.step_overhead_us_per_tp_rank * (tp - 1)) * 1e-6
        self._host_seq_s = engine.step_overhead_us_per_sequence * 1e-6
        self._peak_attn = hardware.peak_flops("bf16")
        self._bw = hardware.hbm_bandwidth_Bps * engine.hbm_efficiency
        self.heads_per_gpu = model.num_attention_heads // self.shard
        self.kv_heads_per_gpu = max(1, model.num_key_value_heads // self.shard)
        qk_cols = (self.heads_per_gpu + self.kv_heads_per_gpu) * model.head_dim
        # attention per (pair FLOPs, KV token bytes, query/output token bytes, query tile
        # blocks, KV split blocks, 1 / blocks for full bandwidth), in seconds where they are times
        hd, kv_bytes = model.head_dim, precision.kv_bytes
        if model.is_mla:
            # latent attention: FLOPs of the decompressed heads (q.k over nope + rope dims, p.v
            # over v dims), bytes of the cached latent, which every head reads (replicated on
            # every tensor-parallel rank, as FlashMLA-style kernels hold it)
            qk, v = model.qk_nope_head_dim + model.qk_rope_head_dim, model.v_head_dim
            pair_flops, kv_token_bytes = 2.0 * (qk + v) * self.heads_per_gpu, model.kv_elements_per_layer * kv_bytes
            qo_bytes = (qk + v) * self.heads_per_gpu * precision.activation_bytes
            qk_cols = self.heads_per_gpu * qk + model.kv_elements_per_layer
        else:
            pair_flops, kv_token_bytes = 4.0 * self.heads_per_gpu * hd, 2.0 * self.kv_heads_per_gpu * hd * kv_bytes
            qo_bytes = 2.0 * self.heads_per_gpu * hd * precision.activation_bytes
        self._kv_write_bytes = (model.kv_elements_per_layer if model.is_mla else 2.0 * self.kv_heads_per_gpu * hd) * kv_bytes
        self._attn_consts = (
            pair_flops / (self._peak_attn * engine.attention_compute_efficiency),
            kv_token_bytes / self._bw,
            qo_bytes / self._bw,
            float(self.heads_per_gpu),
            self.heads_per_gpu / engine.attention_kv_split_tokens if engine.attention_kv_split_tokens > 0 else 0.0,
            1.0 / (engine.attention_ctas_per_sm * hardware.sm_count))
        self._elementwise_bytes_per_token = (engine.elementwise_bytes_per_hidden * model.hidden_size
                                             + engine.elementwise_bytes_per_qk * qk_cols
                                             + engine.elementwise_bytes_per_ffn * model.intermediate_size / self.shard)

    # ----- memory footprint -----------------------------------------------------------
    def weight_bytes_per_gpu(self, stage: int = 0) -> float:
        """Weights one GPU of ``stage`` holds: its layers' shard plus embedding/LM head shards
        (under expert parallelism: whole attention, dense MLPs, shared experts and embeddings,
        and 1/ep of the routed experts)."""
        m, wb, shard = self.model, self.precision.weight_bytes, self.shard
        h, hd = m.hidden_size, m.head_dim
        if m.is_mla:
            attention = m.attention_params_per_layer / shard
        else:
            # K/V projections are replicated when tp exceeds the KV heads (each rank keeps one).
            attention = h * (self.heads_per_gpu * hd + 2 * self.kv_heads_per_gpu * hd) + self.heads_per_gpu * hd * h
        moe = self.stage_moe_layers[stage]
        dense = self.stage_layers[stage] - moe
        if self.ep > 1:
            experts = (m.num_local_experts / self.ep + m.n_shared_experts / shard) * m.expert_params + h * m.num_local_experts
        else:
            experts = m.mlp_params_per_layer / self.tp
        total = 0.0
        for n, mlp in ((dense, m.dense_mlp_params / shard), (moe, experts)):
            if n:
                total += n * (attention + mlp + m.norm_params_per_layer)
        if stage == 0:
            total += m.embedding_params / shard
        if stage == self.pp - 1:
            total += m.lm_head_params / shard + m.hidden_size
            if self.pp > 1 and m.tie_word_embeddings:
                total += m.embedding_params / shard  # the last stage needs its own copy
        return total * wb

    def kv_bytes_per_token_per_gpu(self, stage: int = 0) -> float:
        """Cache bytes per token of the replica's context on one GPU of ``stage`` (data-parallel
        attention: a GPU caches whole tokens of its own sequences, 1/ep of them)."""
        m = self.model
        per_layer = m.kv_elements_per_layer if m.is_mla else 2.0 * self.kv_heads_per_gpu * m.head_dim
        return self.stage_layers[stage] * per_layer * self.precision.kv_bytes * self.dp_share

    # ----- operators ------------------------------------------------------------------------
    def _matmul(self, tokens: float, k: float, n: float, weight_elems: float | None = None,
                flops: float | None = None) -> tuple[float, float]:
        """(arithmetic, memory) seconds of one matmul; remembered for scalar shapes (a decode
        step's matmuls depend only on its token count, which repeats step after step)."""
        if isinstance(tokens, float | int) and not isinstance(weight_elems, np.ndarray):
            key = (tokens, k, n, weight_elems, flops)
            out = self._matmuls.get(key)
            if out is None:
                if len(self._matmuls) >= 16384:
                    self._matmuls.clear()
                out = self._matmuls[key] = self._matmul_uncached(tokens, k, n, weight_elems, flops)
            return out
        return self._matmul_uncached(tokens, k, n, weight_elems, flops)

    def _matmul_uncached(self, tokens, k, n, weight_elems, flops):
        e, ab = self.engine, self.precision.activation_bytes
        w = k * n if weight_elems is None else weight_elems
        fl = 2.0 * tokens * k * n if flops is None else flops
        t_c = fl / self._matmul_rate
        # with a quantisation kernel the matmul reads its 8-bit copy of the input, not the 16-bit one
        in_bytes = self.precision.weight_bytes if self._quant_bytes else ab
        t_m = (w * self.precision.weight_bytes + tokens * (k * in_bytes + n * ab) + tokens * k * self._quant_bytes) / self._bw
        return soft_roofline(t_c, t_m, e.roofline_sharpness)

    def _attention(self, b: BatchShape) -> tuple[Any, Any]:
        """(arithmetic, memory) seconds of one layer's attention over the KV cache: FLOPs of
        every query-key pair, KV bytes read at a bandwidth scaled by how many thread blocks
        the kernel can keep busy (query tiles, plus KV splits under split-KV decoding)."""
        flops_c, kv_c, qo_c, q_blocks_c, kv_blocks_c, occ_c = self._attn_consts
        pairs, kv_tokens = b.attention_pairs, b.kv_tokens_read
        t_c = pairs * flops_c
        blocks = b.query_blocks * q_blocks_c
        if kv_blocks_c:  # split-KV kernels also parallelise over the context
            blocks = blocks + kv_tokens * kv_blocks_c
        occupancy: Any = (np.minimum(1.0, blocks * occ_c) if isinstance(blocks, np.ndarray)
                          else min(1.0, blocks * occ_c))
        t_m = kv_tokens * kv_c / occupancy + b.new_tokens * qo_c
        return soft_roofline(t_c, t_m, self.engine.roofline_sharpness)

    def _attention_ops(self, M: Any) -> list:
        """A layer's operators around attention for ``M`` tokens on this GPU: projections,
        KV write, elementwise work, as (compute, memory) pairs."""
        m = self.model
        h, hd = m.hidden_size, m.head_dim
        kv_write = (0.0, M * self._kv_write_bytes / self._bw)
        if m.is_mla:
            heads, qk, v = self.heads_per_gpu, m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
            latent = m.kv_lora_rank + m.qk_rope_head_dim
            q = ([self._matmul(M, h, m.q_lora_rank), self._matmul(M, m.q_lora_rank, heads * qk)] if m.q_lora_rank
                 else [self._matmul(M, h, heads * qk)])
            return [*q, self._matmul(M, h, latent),                          # latent down-projection
                    self._matmul(M, m.kv_lora_rank, heads * (m.qk_nope_head_dim + v)),   # up-projection
                    kv_write, self._matmul(M, heads * v, h),                  # output projection
                    (0.0, self._elementwise_bytes_per_token * M / self._bw)]
        q_cols = self.heads_per_gpu * hd
        kv_cols = self.kv_heads_per_gpu * hd
        return [
            self._matmul(M, h, q_cols + 2 * kv_cols),                       # fused QKV projection
            kv_write,                                                       # KV write
            self._matmul(M, q_cols, h),                                     # output projection
            (0.0, self._elementwise_bytes_per_token * M / self._bw),
        ]

    def _dense_mlp_ops(self, M: Any) -> list:
        """A dense layer's gated MLP (its ``1/shard`` slice) for ``M`` tokens on this GPU."""
        h, ffn = self.model.hidden_size, self.model.intermediate_size // self.shard
        return [self._matmul(M, h, 2 * ffn), self._matmul(M, ffn, h)]      # fused gate + up, down

    def _moe_ops(self, M: Any, M_all: Any) -> list:
        """A mixture-of-experts layer for ``M`` tokens on this GPU (``M_all`` in the replica's
        batch): router, the routed experts the tokens touch, the shared experts. Tensor
        parallel: every GPU holds a 1/tp slice of every expert; expert parallel: the busiest
        GPU's whole experts (:class:`~sim.cost.experts.ExpertLoad`)."""
        m = self.model
        h, E, k = m.hidden_size, m.num_local_experts, m.num_experts_per_tok
        ops = [self._matmul(M, h, E)]                                       # router
        if self.experts is not None:
            ffn = m.expert_ffn
            pairs, touched = self.experts.busiest_tokens(M_all), self.experts.busiest_touched(M_all)
        else:
            ffn = m.expert_ffn // self.tp
            pairs, touched = M * k, E * (1.0 - (1.0 - k / E) ** M)
        ops.append(self._matmul(pairs, h, 2 * ffn, weight_elems=touched * h * 2 * ffn))
        ops.append(self._matmul(pairs, ffn, h, weight_elems=touched * ffn * h))
        if m.n_shared_experts:
            shared = m.n_shared_experts * m.expert_ffn // self.shard
            ops += [self._matmul(M, h, 2 * shared), self._matmul(M, shared, h)]
        return ops

    def _stage_fixed(self, new_tokens: Any, head_tokens: Any, stage: int) -> tuple:
        """What a stage's step costs apart from attention, for a token count and a count of
        sampled tokens: the dense operators of its layers, the embedding rows, the LM head,
        the kernel launch time, and the collectives it issues."""
        m, e = self.model, self.engine
        layers = self.stage_layers[stage]
        moe_layers = self.stage_moe_layers[stage]
        act = self.precision.activation_bytes
        local = new_tokens * self.dp_share            # this GPU's tokens (data-parallel attention: its share)
        head_tokens = head_tokens * self.dp_share

        def summed(ops: list) -> tuple:
            c_sum = m_sum = 0.0
            for c, mm in ops:
                c_sum, m_sum = c_sum + c, m_sum + mm
            return c_sum, m_sum

        attention = self._attention_ops(local * 1.0)
        kinds = []                                    # (layers of a kind, one such layer's operators)
        if layers > moe_layers:
            kinds.append((layers - moe_layers, attention + self._dense_mlp_ops(local * 1.0)))
        if moe_layers:
            kinds.append((moe_layers, attention + self._moe_ops(local * 1.0, new_tokens * 1.0)))
        compute = memory = 0.0
        for n, ops in kinds:
            c_layer, m_layer = summed(ops)
            compute, memory = compute + n * c_layer, memory + n * m_layer
        pre: list[Collective] = []
        post: list[Collective] = []
        sharded = self.shard > 1
        if stage == 0:
            memory = memory + local * m.hidden_size * self.precision.weight_bytes / self._bw  # embedding rows
            if sharded:
                pre.append(Collective("allreduce", new_tokens * m.hidden_size * act))
        if stage == self.pp - 1 and (isinstance(head_tokens, np.ndarray) or head_tokens > 0):
            c, mm = self._matmul(head_tokens, m.hidden_size, m.vocab_size / self.shard)
            compute = compute + vwhere(head_tokens > 0, c, 0.0)
            memory = memory + vwhere(head_tokens > 0, mm, 0.0)
            if sharded:
                post.append(Collective("allgather", head_tokens * m.vocab_size / self.tp * act))
        kernels = layers * (e.kernels_per_layer + self._quant_kernels) + e.kernels_per_step
        fixed = kernels * e.kernel_overhead_us * 1e-6   # the host's per-step time: stage 0 (stage_work)
        host = kernels * e.host_launch_us * 1e-6
        per_layer: tuple[Collective, ...] = ()
        collective_layers = None
        if self.experts is not None and self.dp_share < 1.0:
            # every mixture-of-experts layer: dispatch each token's hidden state once to every
            # GPU holding one of its experts, and combine the results back
            sent = local * self.experts.ranks_per_token * m.hidden_size * act
            per_layer = (Collective("alltoall", sent), Collective("alltoall", sent))
            collective_layers = moe_layers
        elif self.tp > 1 and self.tp_cols == 1:
            # 1-D (Megatron) TP: all-reduce after attention and after the MLP.
            per_layer = (Collective("allreduce", new_tokens * m.hidden_size * act),) * 2
        elif self.tp > 1:
            # 2-D TP on a rows x cols grid: each of the four serial matmuls is followed by an
            # all-reduce of its 1/(other axis) slice of the activations over one axis.
            row = Collective("allreduce", new_tokens * m.hidden_size * act / self.tp_cols, "rows")
            col = Collective("allreduce", new_tokens * m.hidden_size * act / self.tp_rows, "cols")
            per_layer = (row, col, row, col)
        return compute, memory, fixed, host, per_layer, tuple(pre), tuple(post), collective_layers

    def stage_work(self, b: BatchShape, stage: int = 0) -> StageWork:
        """The local (single-GPU) time of ``stage`` and the collectives it issues.

        Everything but attention depends on the token counts only; for scalar counts (every
        simulated step) that part is remembered, so a step costs one attention evaluation."""
        e = self.engine
        head_tokens = b.new_tokens if e.lm_head_all_prompt_tokens else b.sampled_tokens
        key: tuple | None = None
        part: tuple | None = None
        if isinstance(b.new_tokens, np.ndarray) or isinstance(head_tokens, np.ndarray):
            part = self._stage_fixed(b.new_tokens, head_tokens, stage)
        else:
            key = (b.new_tokens, head_tokens, stage)
            part = self._stage_parts.get(key)
            if part is None:
                if len(self._stage_parts) >= 16384:
                    self._stage_parts.clear()
                    self._networks.clear()
                part = self._stage_parts[key] = self._stage_fixed(b.new_tokens, head_tokens, stage)
        c_rest, m_rest, fixed, host, per_layer, pre, post, collective_layers = part
        layers = self.stage_layers[stage]
        c_attn, m_attn = self._attention(b if self.dp_share == 1.0 else b.scaled(self.dp_share))
        compute = layers * c_attn + c_rest
        memory = layers * m_attn + m_rest
        if not e.cuda_graphs:
            fixed = fixed + vmax(0.0, host - (compute + memory + fixed))
        if stage == 0 and (self._host_step_s or self._host_seq_s):
            fixed = fixed + self._host_step_s + self._host_seq_s * b.num_seqs
        return StageWork(StepTime(compute, memory, 0.0, fixed), layers, per_layer, pre, post, key, collective_layers)

    def network_s(self, work: StageWork, stage: int = 0) -> float:
        """Exposed communication time of one stage's step (every layer's collectives priced once)."""
        comm = self.comm[stage]
        if comm is None or self.tp == 1 or not work.communicating_layers and not work.pre_collectives:
            return 0.0
        key = work.key
        if key is None:         # array byte counts (the analytic model): not remembered
            return self._network_s(work, comm)
        out = self._networks.get(key)
        if out is None:
            if len(self._networks) >= 16384:      # bounded: a predictor asked only for prices (a degraded link's)
                self._networks.clear()
            out = self._networks[key] = self._network_s(work, comm)
        return out

    def _network_s(self, work: StageWork, comm: dict) -> Any:
        def cost(c: Collective):
            group = comm[c.group]
            if c.kind == "allreduce":
                return group.allreduce_s(c.nbytes)
            return group.allgather_s(c.nbytes) if c.kind == "allgather" else group.alltoall_s(c.nbytes)

        total = 0.0
        for c in work.pre_collectives + work.post_collectives:
            total = total + cost(c)
        per_layer = 0.0
        for c in work.per_layer_collectives:
            per_layer = per_layer + cost(c)
        return (total + work.communicating_layers * per_layer) * (1.0 - self.engine.network_overlap)

    def stage(self, b: BatchShape, stage: int = 0) -> StepTime:
        """Time of ``stage`` for batch ``b`` including its collectives (collective fidelity)."""
        work = self.stage_work(b, stage)
        return work.local + StepTime(network_s=self.network_s(work, stage))

    def activation_bytes(self, b: BatchShape) -> float:
        """Bytes of hidden state sent from one pipeline stage to the next."""
        return b.new_tokens * self.model.hidden_size * self.precision.activation_bytes

    def stage_times(self, b: BatchShape) -> list[StepTime]:
        """Each pipeline stage's time for batch ``b``; stages alike (as many layers, neither
        first nor last, collectives of one shape) are priced once."""
        alike: dict[tuple, StepTime] = {}
        out = []
        for s in range(self.pp):
            comm = self.comm[s]
            key = (self.stage_layers[s], s == 0, s == self.pp - 1,
                   tuple((tag, id(g)) for tag, g in comm.items()) if comm else None)
            t = alike.get(key)
            if t is None:
                t = alike[key] = self.stage(b, s)
            out.append(t)
        return out

    def through_stages(self, b: BatchShape, stages: list[StepTime]) -> StepTime:
        """One micro-batch through all ``stages`` (:meth:`stage_times`), with the
        stage-to-stage sends (latency view)."""
        total = StepTime()
        for t in stages:
            total = total + t
        if self.pp > 1 and self.pp_send_s is not None:
            sends = sum(self.pp_send_s(s, self.activation_bytes(b)) for s in range(self.pp - 1))
            total = total + StepTime(network_s=sends)
        return total

    def step(self, b: BatchShape) -> StepTime:
        """One micro-batch through all stages, with the stage-to-stage sends (latency view)."""
        return self.through_stages(b, self.stage_times(b))
