"""Paged KV cache of one replica: fixed-size blocks, capacity from HBM left after weights.

Capacity assumption (vLLM-style): each GPU may use ``gpu_memory_utilization`` of its memory;
from that it holds its weight shard and an activation reserve, and the rest is KV cache.
A replica's token capacity is set by its most loaded GPU (the pipeline stage with the most
layers). Blocks hold ``block_size`` token positions of every layer the GPU serves.
"""
from __future__ import annotations

from sim.errors import ConfigError


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
        held = self.held.get(request, 0)
        need = -(-tokens // self.block_size) - held
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        self.held[request] = held + need
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
