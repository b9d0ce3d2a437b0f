"""Disaggregated prefill and decode: requests handed from a prefill pool to a decode pool,
their KV caches moved over the network (``disagg=pools``).

Two orders, as the engines that do this run them:

* ``transfer=whole`` (vLLM's NIXL connector, SGLang's PD mode): an arrival is routed to a
  prefill replica; after the step that completes its prompt (and samples its first token) it
  leaves the prefill batch with its KV blocks held there, is routed to a decode replica and
  waits there until that replica has free blocks for its prompt; then the decode replica pulls
  the KV, one message per GPU pair, and the prefill replica frees its blocks when it has gone.
* ``transfer=layerwise`` (Dynamo, Mooncake, DistServe): an arrival is first routed to a
  decode replica, which reserves blocks for its prompt when it has them (between its steps);
  then to a prefill replica. The step that completes the prompt sends each layer's KV as that
  layer is computed (ready evenly over the step's priced duration), so the transfer overlaps
  the prefill's compute and only the last layers' messages follow the step.

Either way a request decodes once its whole KV has arrived and the prefill step has ended:
its first token reaches the user then (TTFT includes the transfer; the decode pool streams
the output, as the routers in front of these systems do). A request of one output token
finishes at the prefill pool and moves nothing.

Which bytes go where: a replica's KV is a (layers x KV heads) grid, split by pipeline stage
over layers and by tensor rank over heads; every decode GPU receives the part of the grid it
holds, from a prefill GPU holding it (rectangle overlaps, :func:`pair_shares`), so with at
least as many KV heads as tensor ranks a request moves exactly ``prompt tokens x model KV
bytes per token``; a head replicated over several decode ranks (fewer KV heads than ranks,
MLA's latent under tensor parallelism) is sent to each of them, and under data-parallel
attention (expert parallelism) a request's KV goes from its prefill rank to its decode rank,
one GPU pair per stage. Layer by layer, a pair's part is one message per layer they share.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import simpy

from sim.network.interface import Flow, Network
from sim.observe.metrics import percentiles
from sim.observe.recorder import ColumnRecorder
from sim.policy.batching import StepPlan
from sim.policy.requests import RequestStore
from sim.policy.routing import Router

if TYPE_CHECKING:
    from sim.des.replica import Replica


@dataclass(frozen=True)
class KVShard:
    """The part of the KV grid one GPU holds: layers ``[layer0, layer1)``, heads ``[head0, head1)``
    as fractions of the KV heads."""

    gpu: str
    stage: int
    layer0: int
    layer1: int
    head0: float
    head1: float


def kv_shards(stage_gpus: Sequence[Sequence[str]], stage_layers: Sequence[int], kv_heads: int = 1 << 30,
              dp_rank: int | None = None) -> list[KVShard]:
    """Each GPU's part of a replica's KV: stage ``s`` holds its layers; its ``tp`` ranks hold
    equal fractions of the ``kv_heads`` KV heads, or, with fewer heads than ranks, one head
    each (replicated: ranks ``t`` holds head ``t * kv_heads // tp``; MLA's latent is one head
    every rank holds). With data-parallel attention (``dp_rank``) a request's whole KV is on
    one GPU of each stage, that rank's."""
    out, first = [], 0
    for s, (gpus, layers) in enumerate(zip(stage_gpus, stage_layers)):
        n = len(gpus)
        if dp_rank is not None:
            out.append(KVShard(gpus[dp_rank % n], s, first, first + layers, 0.0, 1.0))
        else:
            for t, g in enumerate(gpus):
                if kv_heads >= n:
                    h0, h1 = t / n, (t + 1) / n
                else:
                    head = t * kv_heads // n
                    h0, h1 = head / kv_heads, (head + 1) / kv_heads
                out.append(KVShard(g, s, first, first + layers, h0, h1))
        first += layers
    return out


@dataclass(frozen=True)
class PairShare:
    """What one prefill GPU sends one decode GPU: ``fraction`` of a request's KV, spanning the
    layers ``[layer0, layer1)`` of the prefill GPU's stage (offsets within that stage)."""

    src: str
    dst: str
    stage: int
    fraction: float
    layer0: int
    layer1: int


def pair_shares(src: list[KVShard], dst: list[KVShard], layers: int) -> list[PairShare]:
    """What every decode GPU needs and which prefill GPU sends it: each destination's
    (layers x heads) rectangle, cut by the distinct source rectangles it overlaps; where
    several source GPUs hold the same rectangle (replicated heads) one sends it, chosen in
    turn. Without replication on the destination side the fractions sum to 1; a replicated
    head is sent to every rank that holds it."""
    out = []
    stage_first: dict[int, int] = {}
    blocks: dict[tuple, list[KVShard]] = {}
    for a in src:
        stage_first.setdefault(a.stage, a.layer0)
        blocks.setdefault((a.stage, a.layer0, a.layer1, a.head0, a.head1), []).append(a)
    for i, b in enumerate(dst):
        for (stage, l0_, l1_, h0_, h1_), holders in blocks.items():
            l0, l1 = max(l0_, b.layer0), min(l1_, b.layer1)
            h0, h1 = max(h0_, b.head0), min(h1_, b.head1)
            if l1 > l0 and h1 > h0:
                a = holders[i % len(holders)]
                first = stage_first[stage]
                out.append(PairShare(a.gpu, b.gpu, stage, (l1 - l0) / layers * (h1 - h0), l0 - first, l1 - first))
    return out


class KVHandoff:
    """The hand-off of requests between the pools and their KV transfers (one per run).

    Replicas ``0 .. P-1`` (global indices, as in ``steps.parquet``) are the prefill pool,
    routed by ``prefill_router``; the rest the decode pool, routed by ``decode_router``
    (local indices). ``transfers`` records one row of ``transfers.parquet`` per request moved.
    """

    def __init__(self, env: simpy.Environment, network: Network, transfer: str, requests: RequestStore,
                 prefill_router: Router, decode_router: Router, kv_bytes_per_token: float,
                 transfers: ColumnRecorder, deliver: Callable[[int], None],
                 cached_prefix: Callable[[int], Sequence[int]]) -> None:
        """``deliver(slot)``: the request's KV and first token have reached its decode replica;
        ``cached_prefix(slot)``: per prefill replica, the tokens of its prompt cached there."""
        self.env, self.network, self.layerwise, self.mode = env, network, transfer == "layerwise", transfer
        self.requests = requests
        self.prefill_router, self.decode_router = prefill_router, decode_router
        self.kv_bytes_per_token = kv_bytes_per_token
        self.transfers, self.deliver, self.cached_prefix = transfers, deliver, cached_prefix
        self.prefill: list[Replica] = []
        self.decode: list[Replica] = []
        self._shares: dict[tuple, list[PairShare]] = {}
        self._layers: dict[int, list[int]] = {}   # replica -> layers per stage
        self._dp: dict[int, bool] = {}            # replica -> attention data-parallel (expert parallelism)
        self.kv_heads = 1 << 30                   # set by add_replicas
        self.source: dict[int, int] = {}          # slot -> its prefill replica (global index)
        self._waiting_parts: dict[int, int] = {}  # slot -> streams or prefill ends still to come
        self._started: dict[int, float] = {}      # slot -> when its transfer began
        self._ready: dict[int, float] = {}        # slot -> when its prefill ended
        self._messages: dict[int, int] = {}
        self._bytes: dict[int, float] = {}         # slot -> bytes its transfer moves
        self.bytes_moved = 0.0
        self.durations_s = array("d")           # per transfer: end - start
        self.exposed_s = array("d")             # per transfer: end - ready (after the prefill step)

    def add_replicas(self, prefill: list[Replica], decode: list[Replica], stage_layers: list[list[int]],
                     kv_heads: int, data_parallel_attention: list[bool]) -> None:
        """The pools' replicas (global index order), each replica's layers per stage, the
        model's KV heads (1 for MLA's latent) and which replicas run attention data-parallel."""
        self.prefill, self.decode = prefill, decode
        self.kv_heads = kv_heads
        for rep in prefill + decode:
            rep.kv = self
            self._layers[rep.index] = stage_layers[rep.index]
            self._dp[rep.index] = data_parallel_attention[rep.index]

    def shares(self, src: Replica, dst: Replica, request_id: int = 0) -> list[PairShare]:
        """Who sends what for a request (data-parallel attention: the request's own ranks)."""
        dp_src, dp_dst = self._dp[src.index], self._dp[dst.index]
        key = (src.index, dst.index, request_id % len(src.stage_gpus[0]) if dp_src else None,
               request_id % len(dst.stage_gpus[0]) if dp_dst else None)
        out = self._shares.get(key)
        if out is None:
            layers = self._layers[src.index]
            out = self._shares[key] = pair_shares(
                kv_shards(src.stage_gpus, layers, self.kv_heads, key[2]),
                kv_shards(dst.stage_gpus, self._layers[dst.index], self.kv_heads, key[3]), sum(layers))
        return out

    # ----- the request's way ----------------------------------------------------------------
    def arrive(self, slot: int) -> None:
        """An admitted arrival: to a prefill replica (whole), or first to a decode replica
        that reserves its blocks (layerwise)."""
        if self.layerwise:
            self._to_decode(slot, self.requests.prompt[slot], self.requests.output[slot])
        else:
            self._to_prefill(slot)

    def _to_prefill(self, slot: int) -> None:
        req = self.requests
        cached = self.cached_prefix(slot) if self.prefill_router.needs_cached else ()
        k = self.prefill_router.pick(req.prompt[slot], req.output[slot], cached=cached)
        self.source[slot] = k
        if req.replica[slot] < 0:           # whole: where it is until a decode replica takes it
            req.replica[slot] = self.prefill[k].index
        self.prefill[k].submit(slot)

    def _to_decode(self, slot: int, prompt: int, output: int) -> None:
        k = self.decode_router.pick(prompt, output, lambda i: self.decode[i].span_tokens())
        rep = self.decode[k]
        self.requests.replica[slot] = rep.index
        rep.await_kv(slot)

    def reserved(self, replica: Replica, slots: list[int]) -> None:
        """A decode replica has reserved blocks for ``slots``: layerwise, they go to prefill
        now; whole, their KV (waiting at the prefill replica) is pulled now."""
        for slot in slots:
            if self.layerwise:
                self._to_prefill(slot)
            else:
                self._stream(slot, self.prefill[self.source[slot]], replica, None, self.env.now, 0.0)

    def prefill_step(self, replica: Replica, stage: int, plan: StepPlan, start_s: float, duration_s: float) -> None:
        """Layerwise: a prefill step (stage) begins; the requests whose prompt it completes
        stream the layers it computes, each as it is computed."""
        if not self.layerwise:
            return
        req = self.requests
        for w in plan.work:
            r = w.request
            if w.samples and req.generated[r] == 0 and req.output[r] > 1:   # a one-token request moves nothing
                dst = self.decode[req.replica[r] - len(self.prefill)]
                self._stream(r, replica, dst, stage, start_s, duration_s)

    def prefilled(self, replica: Replica, slot: int) -> None:
        """``slot`` has sampled its first token at a prefill replica (it left that batch)."""
        req = self.requests
        self.prefill_router.done(replica.index, req.prompt[slot], req.output[slot])
        self._ready[slot] = self.env.now
        if self.layerwise:
            self._part_done(slot)
        else:
            self._to_decode(slot, req.prompt[slot], req.output[slot])

    def finished_at_prefill(self, replica: Replica, slot: int) -> None:
        """A one-token request finished at its prefill replica: release its decode reservation."""
        req = self.requests
        self.prefill_router.done(replica.index, req.prompt[slot], req.output[slot])
        self.source.pop(slot, None)
        if self.layerwise and req.replica[slot] >= 0:
            k = req.replica[slot] - len(self.prefill)
            self.decode[k].release_kv(slot)
            self.decode_router.done(k, req.prompt[slot], req.output[slot])
        req.replica[slot] = replica.index

    def _stream(self, slot: int, src: Replica, dst: Replica, stage: int | None, start_s: float,
                duration_s: float) -> None:
        """Send ``slot``'s KV from ``src`` to ``dst``: the shares of ``stage`` (layerwise, one
        message per layer, layer ``l`` of the stage ready at ``start + (l + 1) d / layers``) or
        all of them in one message per pair (``stage`` None)."""
        nbytes = self.requests.prompt[slot] * self.kv_bytes_per_token
        shares = self.shares(src, dst, self.requests.request_id[slot])
        flows = []
        if stage is None:
            flows = [Flow(s.src, s.dst, nbytes * s.fraction) for s in shares]
        else:
            per_layer_s = duration_s / self._layers[src.index][stage]
            flows = [Flow(s.src, s.dst, nbytes * s.fraction, s.layer1 - s.layer0,
                          start_s + (s.layer0 + 1) * per_layer_s, per_layer_s)
                     for s in shares if s.stage == stage]
        if slot not in self._started:
            self._started[slot] = self.env.now
            self._waiting_parts[slot] = (len(src.stage_gpus) + 1) if stage is not None else 1
            self._messages[slot] = 0
            self._bytes[slot] = nbytes * sum(s.fraction for s in shares)
        self._messages[slot] += sum(f.messages for f in flows)
        done = self.network.send_flows(flows)
        done.callbacks.append(lambda _: self._part_done(slot))

    def _part_done(self, slot: int) -> None:
        """A stream (or, layerwise, the prefill step) of ``slot`` has ended; the last one delivers."""
        left = self._waiting_parts[slot] - 1
        if left:
            self._waiting_parts[slot] = left
            return
        del self._waiting_parts[slot]
        req = self.requests
        src = self.source.pop(slot)
        self.prefill[src].release_kv(slot)
        nbytes = self._bytes.pop(slot)
        self.bytes_moved += nbytes
        now, ready, start = self.env.now, self._ready.pop(slot), self._started.pop(slot)
        self.durations_s.append(now - start)
        self.exposed_s.append(now - ready)
        self.transfers.append(req.request_id[slot], src, req.replica[slot], nbytes, self._messages.pop(slot),
                              ready, start, now)
        self.deliver(slot)


def transfer_stats(kv: KVHandoff) -> dict[str, Any]:
    """``summary.json``'s ``kv_transfer``: bytes moved, transfers, and the time from the first
    message's ready time to the last byte (mean, p50, p90, p99) and the part after the prefill
    step (``exposed_*``: what the transfer adds to TTFT, block waits of ``whole`` included);
    null without transfers."""
    out: dict[str, Any] = {"bytes": kv.bytes_moved, "transfers": len(kv.durations_s), "transfer": kv.mode}
    for name, values in (("", kv.durations_s), ("exposed_", kv.exposed_s)):
        for stat, v in percentiles(np.frombuffer(values, dtype=np.float64)).items():
            out[f"{name}{stat}_s"] = v
    return out
