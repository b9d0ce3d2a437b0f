"""Paged KV cache of one replica: fixed-size blocks, capacity from HBM left after weights.

Capacity assumption (vLLM-style): each GPU may use ``gpu_memory_utilization`` of its memory;
from that it holds its weight shard and an activation reserve, and the rest is KV cache.
A replica's token capacity is set by its most loaded GPU (the pipeline stage with the most
layers). Blocks hold ``block_size`` token positions of every layer the GPU serves.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class KVCapacity:
    weights_GB_per_gpu: float
    usable_GB_per_gpu: float
    kv_GB_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    tokens: int


def kv_capacity(predictor, hardware, engine, model_name: str, block_size: int, draft=None) -> KVCapacity:
    """Token capacity of one replica's KV cache; error if the weights do not fit.

    A draft model on the same GPUs (``draft``: its predictor) takes its weight shard from the
    memory and its own KV per token alongside the target's.
    """
    usable = hardware.memory_bytes * engine.gpu_memory_utilization - engine.activation_reserve_GB * 1e9
    worst_tokens = None
    worst_weights = 0.0
    per_token = 0.0
    for stage in range(predictor.pp):
        weights = predictor.weight_bytes_per_gpu(stage)
        kv_per_token = predictor.kv_bytes_per_token_per_gpu(stage)
        if draft is not None and stage == 0:
            weights += draft.weight_bytes_per_gpu(0)
            kv_per_token += draft.kv_bytes_per_token_per_gpu(0)
        worst_weights = max(worst_weights, weights)
        free = usable - weights
        if free <= kv_per_token * block_size:
            raise ConfigError(
                f"model {model_name} does not fit: {weights / 1e9:.1f} GB of weights per GPU (stage {stage}, "
                f"tp={predictor.tp}, pp={predictor.pp}) on {hardware.name} with {usable / 1e9:.1f} GB usable "
                f"(memory_GB={hardware.memory_GB} x gpu_memory_utilization={engine.gpu_memory_utilization} "
                f"- activation_reserve_GB={engine.activation_reserve_GB}); raise parallel.tp or parallel.pp, "
                f"or quantize (precision.weights)")
        tokens = int(free // kv_per_token)
        if worst_tokens is None or tokens < worst_tokens:
            worst_tokens, per_token = tokens, kv_per_token
    tokens = (worst_tokens // block_size) * block_size
    return KVCapacity(worst_weights / 1e9, usable / 1e9, tokens * per_token / 1e9, per_token, tokens)


class KVBlockPool:
    """Block accounting: which request holds how many blocks (conserved; never negative)."""

    def __init__(self, total_blocks: int, block_size: int) -> None:
        if total_blocks < 1:
            raise ConfigError(f"KV cache holds no blocks (total_blocks={total_blocks})")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.free_blocks = total_blocks
        self.held: dict[int, int] = {}

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def extra_blocks(self, request: int, tokens: int) -> int:
        """Blocks ``request`` still needs to hold ``tokens`` positions."""
        return max(0, self.blocks_for(tokens) - self.held.get(request, 0))

    def grow(self, request: int, tokens: int) -> bool:
        """Hold enough blocks for ``tokens`` positions; False (nothing changed) if too few free."""
        need = self.extra_blocks(request, tokens)
        if need > self.free_blocks:
            return False
        if need:
            self.free_blocks -= need
            self.held[request] = self.held.get(request, 0) + need
        return True

    def shrink(self, request: int, tokens: int) -> None:
        """Release blocks beyond those ``tokens`` positions need (speculative rollback)."""
        keep = self.blocks_for(tokens)
        held = self.held.get(request, 0)
        if held > keep:
            self.held[request] = keep
            self.free_blocks += held - keep

    def free(self, request: int) -> None:
        self.free_blocks += self.held.pop(request, 0)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks
