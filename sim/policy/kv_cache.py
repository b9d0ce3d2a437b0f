"""Paged KV cache of one replica: fixed-size blocks, capacity from HBM left after weights.

Capacity assumption (vLLM-style): each GPU may use ``gpu_memory_utilization`` of its memory;
from that it holds its weight shard and an activation reserve, and the rest is KV cache.
A replica's token capacity is set by its most loaded GPU (the pipeline stage with the most
layers). Blocks hold ``block_size`` token positions of every layer the GPU serves.

Prefix caching (``scheduler.prefix_caching``, vLLM's automatic prefix caching, SGLang's radix
cache): a request's prompt is a chain of *units* of ``unit_tokens`` tokens (the trace's prefix
block ids, e.g. Mooncake's 512-token ``hash_ids``); a unit is identified by its id together
with the unit before it, so equal units are shared only under equal prefixes. When a request's
prompt has been computed, its whole units stay in the cache; a later request on the same
replica whose prompt starts with cached units references them instead of computing them. A
unit no request references is *evictable*: its blocks count as free and are reclaimed, least
recently released first (deepest unit of a chain first), only when a request needs blocks
that are not otherwise free. A unit is never evicted while referenced.
"""
from __future__ import annotations

from sim.errors import ConfigError


class KVBlockPool:
    """Block accounting of one replica: the blocks each request holds privately, the cached
    prefix units it references, and the free blocks (empty, or holding an evictable unit).
    Conserved: free + private + referenced units' blocks = total, never negative."""

    def __init__(self, total_blocks: int, block_size: int, unit_tokens: int | None = None) -> None:
        """``unit_tokens``: tokens per prefix unit (a multiple of ``block_size``) with prefix
        caching on; None: no prefix caching."""
        if total_blocks < 1:
            raise ConfigError(f"KV cache holds no blocks (total_blocks={total_blocks})")
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.free_blocks = total_blocks          # allocatable: empty plus evictable units' blocks
        self.held: dict[int, int] = {}           # request -> private blocks
        self.unit_tokens = unit_tokens
        self.unit_blocks = 0 if unit_tokens is None else unit_tokens // block_size
        self.shared: dict[int, list[int]] = {}   # request -> cached units it references
        self._units: dict[tuple[int, int], int] = {}   # (parent unit or -1, prefix id) -> unit
        self._key: dict[int, tuple[int, int]] = {}     # unit -> its key
        self._refs: dict[int, int] = {}                # unit -> requests referencing it
        self._evictable: dict[int, None] = {}          # units no request references, oldest first
        self._next_unit = 0
        self.hit_tokens = self.lookup_tokens = self.evictions = 0

    def clear(self) -> None:
        """Every block empty, no cached prefix (the replica's GPUs restarted); the counters
        of lookups, hits and evictions are kept."""
        self.free_blocks = self.total_blocks
        self.held.clear()
        self.shared.clear()
        self._units.clear()
        self._key.clear()
        self._refs.clear()
        self._evictable.clear()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def shared_blocks(self, request: int) -> int:
        units = self.shared.get(request)
        return len(units) * self.unit_blocks if units else 0

    def blocks_held(self, request: int) -> int:
        """Blocks holding ``request``'s positions: private ones and its cached units'."""
        return self.held.get(request, 0) + self.shared_blocks(request)

    def extra_blocks(self, request: int, tokens: int) -> int:
        """Blocks ``request`` still needs to hold ``tokens`` positions."""
        return max(0, self.blocks_for(tokens) - self.blocks_held(request))

    def _take(self, blocks: int) -> None:
        """Allocate ``blocks`` free blocks, evicting the least recently released units whose
        blocks are needed."""
        empty = self.free_blocks - len(self._evictable) * self.unit_blocks
        while empty < blocks:
            unit = next(iter(self._evictable))
            del self._evictable[unit]
            del self._units[self._key.pop(unit)]
            del self._refs[unit]
            self.evictions += 1
            empty += self.unit_blocks
        self.free_blocks -= blocks

    def grow(self, request: int, tokens: int) -> bool:
        """Hold enough blocks for ``tokens`` positions; False (nothing changed) if too few free."""
        held = self.held.get(request, 0)
        need = -(-tokens // self.block_size) - held
        if self.shared:
            need -= self.shared_blocks(request)
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        if self._evictable:
            self._take(need)
        else:
            self.free_blocks -= need
        self.held[request] = held + need
        return True

    def shrink(self, request: int, tokens: int) -> None:
        """Release private blocks beyond those ``tokens`` positions need (speculative rollback)."""
        keep = max(0, self.blocks_for(tokens) - self.shared_blocks(request))
        held = self.held.get(request, 0)
        if held > keep:
            self.held[request] = keep
            self.free_blocks += held - keep

    def free(self, request: int) -> None:
        """Release everything ``request`` holds; its cached units become evictable once no
        other request references them (deepest first: a chain is evicted from its end)."""
        self.free_blocks += self.held.pop(request, 0)
        for unit in reversed(self.shared.pop(request, ())):
            self._refs[unit] -= 1
            if self._refs[unit] == 0:
                self._evictable[unit] = None
                self.free_blocks += self.unit_blocks

    # ----- prefix caching ------------------------------------------------------------------
    def cached_prefix(self, ids, prompt: int) -> list[int]:
        """The cached units a prompt of ``prompt`` tokens with prefix ids ``ids`` starts with
        (at most ``prompt - 1`` tokens' worth: its last position is always computed)."""
        units, parent = [], -1
        most = (prompt - 1) // self.unit_tokens if self.unit_tokens else 0
        for x in ids[:most]:
            unit = self._units.get((parent, int(x)))
            if unit is None:
                break
            units.append(unit)
            parent = unit
        return units

    def evictable_among(self, units: list[int]) -> int:
        """Blocks of ``units`` that now count as free (referencing them takes them)."""
        return sum(self.unit_blocks for u in units if self._refs[u] == 0)

    def reference(self, request: int, units: list[int], prompt: int) -> int:
        """``request`` (holding nothing) starts with cached ``units``; returns the cached tokens."""
        self.lookup_tokens += prompt
        for unit in units:
            if self._refs[unit] == 0:
                del self._evictable[unit]
                self.free_blocks -= self.unit_blocks
            self._refs[unit] += 1
        if units:
            self.shared[request] = list(units)
        tokens = len(units) * (self.unit_tokens or 0)
        self.hit_tokens += tokens
        return tokens

    def insert(self, request: int, ids, prompt: int) -> None:
        """``request``'s prompt is computed: its whole units join the cache. Where a unit is
        already cached under the same prefix (computed meanwhile by another request),
        ``request`` references it and frees its own copy (as vLLM does when a full block's
        hash is found), so a request always references a whole chain from its root."""
        assert self.unit_tokens is not None
        units = self.shared.setdefault(request, [])
        parent = units[-1] if units else -1
        for x in ids[len(units):prompt // self.unit_tokens]:
            if self.held.get(request, 0) < self.unit_blocks:
                break
            key = (parent, int(x))
            unit = self._units.get(key)
            if unit is None:
                unit = self._next_unit
                self._next_unit += 1
                self._units[key], self._key[unit], self._refs[unit] = unit, key, 1
            else:                                        # the cached copy replaces its own
                if self._refs[unit] == 0:
                    del self._evictable[unit]
                    self.free_blocks -= self.unit_blocks
                self._refs[unit] += 1
                self.free_blocks += self.unit_blocks
            self.held[request] -= self.unit_blocks       # its blocks now belong to the unit (or are freed)
            units.append(unit)
            parent = unit
        if not units:
            del self.shared[request]

    @property
    def evictable_blocks(self) -> int:
        return len(self._evictable) * self.unit_blocks

    def referenced_blocks(self) -> int:
        """Blocks of cached units some request references."""
        return sum(self.unit_blocks for refs in self._refs.values() if refs > 0)

    @property
    def cached_units(self) -> int:
        return len(self._refs)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks
