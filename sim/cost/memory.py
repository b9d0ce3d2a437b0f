"""GPU memory of one replica: weights, activation reserve and the KV cache that fits beside them.

Capacity assumption (vLLM-style): each GPU may use ``gpu_memory_utilization`` of its memory;
from that it holds its weight shard and an activation reserve, and the rest is KV cache.
A replica's token capacity is set by its most loaded GPU (the pipeline stage with the most
layers). Blocks hold ``block_size`` token positions of every layer the GPU serves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sim.errors import ConfigError
from sim.spec.engine import EngineProfile
from sim.spec.hardware import HardwareSpec


class ShardMemory(Protocol):
    """What memory accounting needs of a step predictor: per-GPU bytes of one stage."""

    pp: int
    tp: int

    def weight_bytes_per_gpu(self, stage: int = 0) -> float: ...

    def kv_bytes_per_token_per_gpu(self, stage: int = 0) -> float: ...


@dataclass(frozen=True)
class KVCapacity:
    weights_GB_per_gpu: float
    usable_GB_per_gpu: float
    kv_GB_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    tokens: int


def usable_bytes(hardware: HardwareSpec, engine: EngineProfile) -> float:
    """Bytes of one GPU's memory the engine may fill with weights and KV cache."""
    return hardware.memory_bytes * engine.gpu_memory_utilization - engine.activation_reserve_GB * 1e9


def stage_bytes(predictor: ShardMemory, stage: int, draft: ShardMemory | None = None) -> tuple[float, float]:
    """(weight bytes, KV bytes per cached token) on one GPU of ``stage``; a draft model on the
    same GPUs (``draft``: its predictor, on the first stage) adds its own shard and KV."""
    weights = predictor.weight_bytes_per_gpu(stage)
    kv_per_token = predictor.kv_bytes_per_token_per_gpu(stage)
    if draft is not None and stage == 0:
        weights += draft.weight_bytes_per_gpu(0)
        kv_per_token += draft.kv_bytes_per_token_per_gpu(0)
    return weights, kv_per_token


def kv_capacity(predictor: ShardMemory, hardware: HardwareSpec, engine: EngineProfile, model_name: str,
                block_size: int, draft: ShardMemory | None = None) -> KVCapacity:
    """Token capacity of one replica's KV cache; error if the weights do not fit.

    A draft model on the same GPUs (``draft``: its predictor) takes its weight shard from the
    memory and its own KV per token alongside the target's.
    """
    usable = usable_bytes(hardware, engine)
    worst_tokens: int | None = None
    worst_weights = 0.0
    per_token = 0.0
    for stage in range(predictor.pp):
        weights, kv_per_token = stage_bytes(predictor, stage, draft)
        worst_weights = max(worst_weights, weights)
        free = usable - weights
        if free > 0 and free <= kv_per_token * block_size:
            raise ConfigError(
                f"scheduler.block_size={block_size} tokens is more than the KV cache holds: "
                f"{int(free // kv_per_token):,} tokens per replica ({free / 1e9:.1f} GB free per GPU after "
                f"{weights / 1e9:.1f} GB of weights, stage {stage}); use a block size of at most that "
                "(engines use 16 or 32)")
        if free <= 0:
            raise ConfigError(
                f"model {model_name} does not fit: {weights / 1e9:.1f} GB of weights per GPU (stage {stage}, "
                f"tp={predictor.tp}, pp={predictor.pp}) on {hardware.name} with {usable / 1e9:.1f} GB usable "
                f"(memory_GB={hardware.memory_GB} x gpu_memory_utilization={engine.gpu_memory_utilization} "
                f"- activation_reserve_GB={engine.activation_reserve_GB}); raise parallel.tp or parallel.pp, "
                f"or quantize (precision.weights)")
        tokens = int(free // kv_per_token)
        if worst_tokens is None or tokens < worst_tokens:
            worst_tokens, per_token = tokens, kv_per_token
    assert worst_tokens is not None  # pp >= 1
    tokens = (worst_tokens // block_size) * block_size
    return KVCapacity(worst_weights / 1e9, usable / 1e9, tokens * per_token / 1e9, per_token, tokens)


def host_copy_s(nbytes: float, copies: int, latency_s: float, bandwidth_Bps: float) -> float:
    """Seconds to move ``nbytes`` between a GPU and host memory in ``copies`` transfers over
    its host link (PCIe): each transfer pays the link latency, the bytes its bandwidth. Every
    GPU of a replica copies its own shard over its own link, at once (a dedicated x16 link per
    GPU, as on HGX boards). Swapping a sequence's KV copies its K and V blocks of each layer on
    the GPU: ``copies = 2 x layers``, batched per layer as offloading engines do."""
    if nbytes <= 0:
        return 0.0
    return copies * latency_s + nbytes / bandwidth_Bps


def swap_time_s(out_blocks: int, in_blocks: int, block_bytes_per_gpu: float, layers: int, latency_s: float,
                bandwidth_Bps: float) -> float:
    """A step's KV swaps: ``out_blocks`` to host memory and ``in_blocks`` back, each way
    :func:`host_copy_s` of its bytes on every GPU (K and V of each of the GPU's ``layers``)."""
    return (host_copy_s(out_blocks * block_bytes_per_gpu, 2 * layers, latency_s, bandwidth_Bps)
            + host_copy_s(in_blocks * block_bytes_per_gpu, 2 * layers, latency_s, bandwidth_Bps))
