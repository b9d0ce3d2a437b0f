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
over layers and by tensor rank over heads; every prefill GPU sends every decode GPU the part
of its block the decode GPU holds (rectangle overlaps), so a request moves exactly
``prompt tokens x model KV bytes per token`` in all (a KV head replicated over several ranks
of one side is moved once). Layer by layer, a pair's part is one message per layer they share.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import simpy

from sim.network.interface import Flow, Network
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


def kv_shards(stage_gpus: Sequence[Sequence[str]], stage_layers: Sequence[int]) -> list[KVShard]:
    """Each GPU's part of a replica's KV: stage ``s`` holds its layers, its ``tp`` ranks equal
    fractions of the heads (ranks in placement order)."""
    out, first = [], 0
    for s, (gpus, layers) in enumerate(zip(stage_gpus, stage_layers)):
        n = len(gpus)
        for t, g in enumerate(gpus):
            out.append(KVShard(g, s, first, first + layers, t / n, (t + 1) / n))
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
    """The rectangle overlaps of two shardings of one ``layers``-layer KV grid (they sum to 1)."""
    out = []
    stage_first: dict[int, int] = {}
    for a in src:
        stage_first.setdefault(a.stage, a.layer0)
    for a in src:
        for b in dst:
            l0, l1 = max(a.layer0, b.layer0), min(a.layer1, b.layer1)
            h0, h1 = max(a.head0, b.head0), min(a.head1, b.head1)
            if l1 > l0 and h1 > h0:
                first = stage_first[a.stage]
                out.append(PairShare(a.gpu, b.gpu, a.stage, (l1 - l0) / layers * (h1 - h0), l0 - first, l1 - first))
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
        self._shares: dict[tuple[int, int], list[PairShare]] = {}
        self._layers: dict[int, list[int]] = {}   # replica -> layers per stage
        self.source: dict[int, int] = {}          # slot -> its prefill replica (global index)
        self._waiting_parts: dict[int, int] = {}  # slot -> streams or prefill ends still to come
        self._started: dict[int, float] = {}      # slot -> when its transfer began
        self._ready: dict[int, float] = {}        # slot -> when its prefill ended
        self._messages: dict[int, int] = {}
        self.bytes_moved = 0.0
        self.durations_s = array("d")           # per transfer: end - start
        self.exposed_s = array("d")             # per transfer: end - ready (after the prefill step)

    def add_replicas(self, prefill: list[Replica], decode: list[Replica], stage_layers: list[list[int]]) -> None:
        """The pools' replicas (global index order) and each replica's layers per stage."""
        self.prefill, self.decode = prefill, decode
        for rep in prefill + decode:
            rep.kv = self
            self._layers[rep.index] = stage_layers[rep.index]

    def shares(self, src: Replica, dst: Replica) -> list[PairShare]:
        key = (src.index, dst.index)
        out = self._shares.get(key)
        if out is None:
            layers = self._layers[src.index]
            out = self._shares[key] = pair_shares(kv_shards(src.stage_gpus, layers),
                                                  kv_shards(dst.stage_gpus, self._layers[dst.index]), sum(layers))
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
            self.decode[k].batcher.release(slot)
            self.decode_router.done(k, req.prompt[slot], req.output[slot])
        req.replica[slot] = replica.index

    def _stream(self, slot: int, src: Replica, dst: Replica, stage: int | None, start_s: float,
                duration_s: float) -> None:
        """Send ``slot``'s KV from ``src`` to ``dst``: the shares of ``stage`` (layerwise, one
        message per layer, layer ``l`` of the stage ready at ``start + (l + 1) d / layers``) or
        all of them in one message per pair (``stage`` None)."""
        nbytes = self.requests.prompt[slot] * self.kv_bytes_per_token
        flows = []
        if stage is None:
            flows = [Flow(s.src, s.dst, nbytes * s.fraction) for s in self.shares(src, dst)]
        else:
            per_layer_s = duration_s / self._layers[src.index][stage]
            flows = [Flow(s.src, s.dst, nbytes * s.fraction, s.layer1 - s.layer0,
                          start_s + (s.layer0 + 1) * per_layer_s, per_layer_s)
                     for s in self.shares(src, dst) if s.stage == stage]
        if slot not in self._started:
            self._started[slot] = self.env.now
            self._waiting_parts[slot] = (len(src.stage_gpus) + 1) if stage is not None else 1
            self._messages[slot] = 0
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
        self.prefill[src].batcher.release(slot)
        nbytes = req.prompt[slot] * self.kv_bytes_per_token
        self.bytes_moved += nbytes
        now, ready, start = self.env.now, self._ready.pop(slot), self._started.pop(slot)
        self.durations_s.append(now - start)
        self.exposed_s.append(now - ready)
        self.transfers.append(req.request_id[slot], src, req.replica[slot], nbytes, self._messages.pop(slot),
                              ready, start, now)
        self.deliver(slot)


def transfer_stats(kv: KVHandoff) -> dict[str, float]:
    """``summary.json``'s ``kv_transfer``: bytes moved, transfers, and the time from the first
    message's ready time to the last byte (mean, p50, p99) and the part after the prefill step
    (``exposed_*``: what the transfer adds to TTFT, block waits of ``whole`` included)."""
    d, e = np.frombuffer(kv.durations_s, dtype=np.float64), np.frombuffer(kv.exposed_s, dtype=np.float64)
    out: dict[str, float] = {"bytes": kv.bytes_moved, "transfers": int(len(d)), "transfer": kv.mode}   # type: ignore[dict-item]
    for name, x in (("", d), ("exposed_", e)):
        out[f"{name}mean_s"] = float(x.mean()) if len(x) else float("nan")
        out[f"{name}p50_s"] = float(np.percentile(x, 50)) if len(x) else float("nan")
        out[f"{name}p99_s"] = float(np.percentile(x, 99)) if len(x) else float("nan")
    return out
