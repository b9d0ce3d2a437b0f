"""Collective algorithms as schedules of point-to-point messages, and their alpha-beta cost.

A message of ``n`` bytes along a path with per-hop latencies ``lat_k`` and bandwidths
``bw_k`` is cut-through: its head crosses each hop after the hop's latency, and its tail
leaves the last hop ``n / min(bw_k)`` after its head entered the first one, so the
uncontended delivery time is ``sum(lat_k) + n / min(bw_k)`` (the alpha-beta model). Each
collective also pays the engine's software latency once (``collective_software_us``:
kernel launch, synchronisation, protocol setup).

Algorithms (n ranks, ``S`` bytes per rank's buffer):

* ring all-reduce: ``2(n-1)`` steps; in each every rank sends ``S/n`` to its ring successor
  as soon as it received the previous step's chunk from its predecessor;
* one-shot all-reduce: every rank sends its whole buffer to every other rank, in the order
  ``r+1, r+2, ...``, and reduces locally (the reduction's own time is neglected);
* ring all-gather: ``n-1`` steps of ``S`` bytes (``S`` = each rank's contribution);
* send/recv: one message;
* ``nccl_model``: NCCL's own tuning-model formula (:func:`nccl_model_s`), the cheapest of the
  LL/LL128/Simple protocols per message, as Epoch AI's model uses it. It is a formula, not a
  message schedule: under message fidelity it is one timed event on no link.

:func:`ring_schedule_s` and :func:`oneshot_schedule_s` replay exactly the message schedule
that the per-message network simulates (:mod:`sim.network`), assuming messages of one
collective never share a link with messages of another pair (true on NVSwitch and
rail-optimised fabrics), so the two fidelities agree when nothing else contends. For a ring
whose hops are identical the replay reduces to the closed form
``2(n-1) (alpha + S/(n beta))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Any, Sequence

import numpy as np

from sim.cost.vec import vmax
from sim.errors import require


@dataclass(frozen=True)
class PairPath:
    """Cost view of the route between two GPUs: its hops as (edge, latency_s, bandwidth_Bps)."""

    hops: tuple[tuple[object, float, float], ...]

    @cached_property
    def signature(self) -> tuple[tuple[float, float], ...]:
        """Per-hop (latency, bandwidth) without the edge names: equal for equivalent paths."""
        return tuple((h[1], h[2]) for h in self.hops)

    @cached_property
    def latency_s(self) -> float:
        return sum(h[1] for h in self.hops)

    @cached_property
    def bandwidth_Bps(self) -> float:
        return min(h[2] for h in self.hops)

    def message_s(self, nbytes: float) -> float:
        """Uncontended delivery time: ``alpha + n / beta``."""
        return self.latency_s + nbytes / self.bandwidth_Bps

    def send(self, start_s: float, nbytes: float, link_free: dict) -> float:
        """Cut-through delivery time of a message leaving at ``start_s``.

        ``link_free`` maps each edge to when it finishes serialising its previous message
        of this schedule and is updated, so back-to-back messages on one path queue per hop
        exactly as on the per-message network's FIFO links.
        """
        head = tail = start_s
        for edge, lat, bw in self.hops:
            begin = vmax(head, link_free.get(edge, 0.0))
            end = vmax(begin + nbytes / bw, tail)
            link_free[edge] = end
            head, tail = begin + lat, end + lat
        return tail


def ring_schedule_s(ring: Sequence[PairPath], chunk_bytes, steps: int):
    """Completion time of ``steps`` ring steps; ``ring[r]`` is the path from rank r to r+1.

    Rank r sends step j's chunk when it has received step j-1's from rank r-1, and a chunk
    leaves a path no sooner than one bottleneck serialisation after the previous chunk on the
    same path (FIFO links, cut-through), so with ``c_r = alpha_r + S/beta_r`` and
    ``g_r = S/beta_r`` the arrival times obey
    ``T[r, j] = max(T[r-1, j-1] + c_r, T[r, j-1] + g_r)`` — a max-plus recurrence evaluated for
    all ranks at once (and for an array of chunk sizes at once).
    """
    n = len(ring)
    if n <= 1 or steps == 0:
        return 0.0 * chunk_bytes
    if len({p.signature for p in ring}) == 1:
        # Identical hops everywhere: every step costs one message time.
        return steps * ring[0].message_s(chunk_bytes)
    chunk = np.asarray(chunk_bytes, dtype=np.float64)
    lat = np.array([p.latency_s for p in ring])[:, None]
    inv_bw = np.array([1.0 / p.bandwidth_Bps for p in ring])[:, None]
    g = inv_bw * chunk.reshape(1, -1)
    c = lat + g
    t = c.copy()
    prev = np.arange(n) - 1          # rank r receives from r - 1 (rank 0 from n - 1)
    for _ in range(steps - 1):
        t = np.maximum(t[prev] + c, t + g)
    done = t.max(axis=0)
    return float(done[0]) if chunk.ndim == 0 else done


def oneshot_schedule_s(paths: Sequence[Sequence[PairPath]], nbytes: Any) -> Any:
    """Completion of a one-shot exchange; ``paths[r][k]`` is rank r's route to rank r+k+1.

    Each rank's messages queue on its own links; messages of different ranks are assumed not
    to meet on a link (true through a switch when rank r sends to r+1, r+2, ... in turn).
    """
    done = 0.0
    if len({tuple(p.signature for p in row) for row in paths}) == 1:
        paths = paths[:1]  # every rank's schedule is the same: compute one
    for row in paths:
        link_free: dict = {}
        for p in row:
            done = vmax(done, p.send(0.0, nbytes, link_free))
    return done


# NCCL's own latency model (src/graph/tuning.cc, quoted in NVIDIA/nccl#1334; published_numbers.md
# section 2.1) as used by Epoch AI's inference-economics model (section 5.2): per protocol, the
# base latency, the per-hop latency inside a node (NVLink) and across nodes (network), in us,
# and the fraction of link bandwidth the protocol achieves.
NCCL_PROTOCOLS = {
    "LL": (6.8, 0.6, 5.0, 0.5),
    "LL128": (14.0, 1.25, 8.5, 0.95),
    "Simple": (0.0, 28.0, 28.0, 1.0),
}


def nccl_model_s(kind: str, n: int, ranks_per_node: int, nodes: int, nbytes, bandwidth_Bps: float,
                 latency_scale: float = 1.0, hop_us: tuple[float, float] | None = None):
    """NCCL-tuning-model time of an all-reduce/all-gather, cheapest protocol per message.

    Latency ``base + m((ranks_per_node - 1) hop_nvlink + log2(nodes) hop_net)`` with
    ``m = 2`` for all-reduce and 1 for all-gather, times ``latency_scale``; bandwidth
    ``m (n-1)/n S / (bandwidth x protocol factor)`` (``S`` = the full buffer for all-reduce,
    ``n`` contributions of ``nbytes`` for all-gather).

    ``hop_us = (intra_node_us, network_us)``, when given (a topology with fitted link
    latencies), replaces NCCL's LL per-hop constants (0.6 us NVLink, 5 us network); the
    other protocols' hops shift by the same amount (a slower link adds the same time per hop
    whatever the protocol), never below zero. ``None`` keeps NCCL's constants.
    """
    import math

    m = 2.0 if kind == "allreduce" else 1.0
    total = nbytes if kind == "allreduce" else nbytes * n
    ll_nv, ll_net = NCCL_PROTOCOLS["LL"][1:3]
    best = None
    for base, hop_nv, hop_net, factor in NCCL_PROTOCOLS.values():
        if hop_us is not None:
            hop_nv, hop_net = max(0.0, hop_nv + hop_us[0] - ll_nv), max(0.0, hop_net + hop_us[1] - ll_net)
        lat = (base + m * ((ranks_per_node - 1) * hop_nv + math.log2(nodes) * hop_net)) * 1e-6 * latency_scale
        t = lat + m * (n - 1) / n * total / (bandwidth_Bps * factor)
        best = t if best is None else (np.minimum(best, t) if isinstance(t, np.ndarray) else min(best, t))
    return best


#: the group sizes vLLM runs its custom all-reduce on (one NVLink domain); others use NCCL
CUSTOM_RANKS = (2, 4, 6, 8)


def custom_oneshot(n: int, nbytes):
    """vLLM's choice between its one-stage and two-stage custom all-reduce kernels
    (``csrc/custom_all_reduce.cuh``, fully NVLink-connected GPUs): one-shot (True) for 2 ranks,
    for up to 4 ranks below 512 KB and up to 8 ranks below 256 KB; two-shot otherwise
    (``nbytes`` a number or an array of sizes)."""
    return (n <= 2) | ((n <= 4) & (nbytes < 512 * 1024)) | ((n <= 8) & (nbytes < 256 * 1024))


def custom_allreduce_stages(n: int, nbytes: float) -> str:
    """``oneshot`` or ``twoshot`` for one size (:func:`custom_oneshot`)."""
    return "oneshot" if custom_oneshot(n, nbytes) else "twoshot"


def ring_allreduce_closed_form_s(n: int, nbytes: float, alpha_s: float, beta_Bps: float,
                                 software_s: float = 0.0) -> float:
    """Textbook ring all-reduce: ``software + 2(n-1) (alpha + S/(n beta))``."""
    require(n >= 1, "ring size must be >= 1")
    if n == 1:
        return 0.0
    return software_s + 2 * (n - 1) * (alpha_s + nbytes / n / beta_Bps)


def shared_channels(channels: Sequence[Sequence[PairPath]]) -> list[list[PairPath]]:
    """Each channel's ring with every hop's bandwidth divided by the number of channels that
    cross that link (fluid sharing between channels running at once)."""
    if len(channels) <= 1:
        return [list(c) for c in channels]
    users: dict = {}
    for c, ring in enumerate(channels):
        for p in ring:
            for edge, _, _ in p.hops:
                users.setdefault(edge, set()).add(c)
    return [[PairPath(tuple((e, lat, bw / len(users[e])) for e, lat, bw in p.hops)) for p in ring]
            for ring in channels]


class GroupCollectives:
    """Alpha-beta cost of the collectives of one group of GPUs (pure; cached per size).

    ``ring_paths[r]`` routes rank r to r+1 (mod n); ``oneshot_paths[r][k]`` routes rank r to
    rank r+k+1. ``oneshot_ok`` says whether the group shares one switch domain where
    engines use one-shot all-reduce kernels; ``algorithm`` is ``ring``, ``oneshot`` or
    ``auto`` (one-shot up to ``oneshot_max_bytes``, ring above) or ``custom`` (vLLM's custom
    all-reduce: one-shot or two-shot by :func:`custom_allreduce_stages`, the ring above
    ``oneshot_max_bytes`` or on group sizes outside :data:`CUSTOM_RANKS`; its
    peer-memory routes are ``oneshot_paths`` at the achieved P2P bandwidth).

    ``hop_us`` (optional) gives ``nccl_model`` the fabric's own per-hop latencies (see
    :func:`nccl_model_s`).

    ``channels`` (optional) are several rings over the same ranks that split every ring
    collective between them, as NCCL does across nodes with one ring per rail: each carries
    ``1/len(channels)`` of the data, links they share are shared fluidly, and the collective
    ends when the slowest channel does. Without it the one ring is ``ring_paths``.
    """

    def __init__(self, ring_paths: Sequence[PairPath], oneshot_paths: Sequence[Sequence[PairPath]],
                 software_s: float, algorithm: str = "auto", oneshot_max_bytes: float = 512 * 1024,
                 oneshot_ok: bool = True, ranks_per_node: int = 1, nodes: int = 1,
                 latency_scale: float = 1.0, channels: Sequence[Sequence[PairPath]] | None = None,
                 hop_us: tuple[float, float] | None = None,
                 all_pairs: Callable[[], list[list[PairPath]]] | None = None) -> None:
        self.n = len(ring_paths)
        self.ring_paths = tuple(ring_paths)
        self.channels = shared_channels(channels) if channels else [list(ring_paths)]
        self.oneshot_paths = tuple(tuple(row) for row in oneshot_paths)
        self.software_s = software_s
        self.algorithm = algorithm
        self.oneshot_max_bytes = oneshot_max_bytes
        self.oneshot_ok = oneshot_ok
        self.ranks_per_node, self.nodes, self.latency_scale = ranks_per_node, nodes, latency_scale
        self.hop_us = hop_us  # (intra-node, network) hop latency for nccl_model; None: NCCL's constants
        self._cache: dict[tuple[str, float], float] = {}
        self._arrays: dict[tuple, np.ndarray] = {}
        self._all_pairs = all_pairs     # every rank's route to every other (built when an all-to-all needs them)

    def shape_key(self) -> tuple:
        """Everything the costs depend on, with links renamed by first appearance: equal keys
        give equal costs (the link names only matter for which routes share a link)."""
        names: dict = {}

        def route(p: PairPath) -> tuple:
            return tuple((names.setdefault(e, len(names)), lat, bw) for e, lat, bw in p.hops)

        return (tuple(route(p) for p in self.ring_paths),
                tuple(tuple(route(p) for p in ring) for ring in self.channels),
                tuple(tuple(route(p) for p in row) for row in self.oneshot_paths),
                self.software_s, self.algorithm, self.oneshot_max_bytes, self.oneshot_ok, self.ranks_per_node,
                self.nodes, self.latency_scale, self.hop_us)

    def _ring_s(self, nbytes, steps: int, per_rank_chunk: bool):
        """Ring schedule split over the channels (``nbytes`` is the whole buffer per rank)."""
        k = len(self.channels)
        chunk = nbytes / k / (self.n if per_rank_chunk else 1)
        times = [ring_schedule_s(ring, chunk, steps) for ring in self.channels]
        out = times[0]
        for t in times[1:]:
            out = np.maximum(out, t) if isinstance(out, np.ndarray) or isinstance(t, np.ndarray) else max(out, t)
        return out

    def nccl_model_s(self, kind: str, nbytes):
        bw = len(self.channels) * min(p.bandwidth_Bps for ring in self.channels for p in ring)
        return nccl_model_s(kind, self.n, self.ranks_per_node, self.nodes, nbytes, bw, self.latency_scale, self.hop_us)

    def allreduce_algorithm(self, nbytes: float) -> str:
        if self.algorithm == "nccl_model":
            return "nccl_model"
        if self.algorithm == "ring" or not self.oneshot_ok:
            return "ring"
        if self.algorithm == "oneshot":
            return "oneshot"
        if nbytes > self.oneshot_max_bytes:
            return "ring"
        if self.algorithm != "custom":
            return "oneshot"
        return custom_allreduce_stages(self.n, nbytes) if self.n in CUSTOM_RANKS else "ring"

    def _peer_exchange_s(self, nbytes):
        """One-shot (whole buffer to every peer) or two-shot (``1/n`` of it to every peer, twice:
        reduce-scatter, then all-gather) through peer memory, by size."""
        one = oneshot_schedule_s(self.oneshot_paths, nbytes)
        if self.algorithm != "custom":
            return one
        two = 2.0 * oneshot_schedule_s(self.oneshot_paths, nbytes / self.n)
        return np.where(custom_oneshot(self.n, nbytes), one, two) if isinstance(nbytes, np.ndarray) \
            else (one if custom_oneshot(self.n, nbytes) else two)

    def _cached_array(self, kind: str, nbytes: np.ndarray, compute) -> np.ndarray:
        """``compute(nbytes)`` for an array of sizes, remembered by the sizes' bytes (the
        analytic model asks for the same batch-size grid split after split)."""
        key = (kind, nbytes.shape, nbytes.tobytes())
        t = self._arrays.get(key)
        if t is None:
            t = np.asarray(compute(nbytes), dtype=np.float64)
            t.setflags(write=False)
            self._arrays[key] = t
        return t

    def _allreduce_array_s(self, nbytes: np.ndarray) -> np.ndarray:
        ring = self._ring_s(nbytes, 2 * (self.n - 1), True)
        if self.algorithm == "ring" or not self.oneshot_ok:
            return ring + self.software_s
        if self.algorithm == "oneshot":
            return oneshot_schedule_s(self.oneshot_paths, nbytes) + self.software_s
        if self.algorithm == "custom" and self.n not in CUSTOM_RANKS:
            return ring + self.software_s
        return np.where(nbytes <= self.oneshot_max_bytes, self._peer_exchange_s(nbytes), ring) + self.software_s

    def _timed(self, kind: str, nbytes, scalar_s, array_s):
        """Time of collective ``kind`` for ``nbytes`` (a float or an array of sizes), remembered
        by size; a group of one costs nothing and ``nccl_model`` is NCCL's formula."""
        if self.n <= 1:
            return 0.0 * nbytes
        if self.algorithm == "nccl_model":
            return self.nccl_model_s(kind, nbytes) + self.software_s
        if isinstance(nbytes, np.ndarray):
            return self._cached_array(kind, nbytes, array_s)
        key = (kind, nbytes)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = scalar_s(nbytes)
        return t

    def _allreduce_scalar_s(self, nbytes: float) -> float:
        if self.allreduce_algorithm(nbytes) == "ring":
            t = self._ring_s(nbytes, 2 * (self.n - 1), True)
        else:
            t = self._peer_exchange_s(nbytes)
        return t + self.software_s

    def _allgather_s(self, nbytes):
        return self._ring_s(nbytes, self.n - 1, False) + self.software_s

    def allreduce_s(self, nbytes):
        """All-reduce of ``nbytes`` per rank (a float, or a numpy array of sizes)."""
        return self._timed("allreduce", nbytes, self._allreduce_scalar_s, self._allreduce_array_s)

    def allgather_s(self, nbytes):
        """Ring all-gather where each rank contributes ``nbytes`` (float or numpy array)."""
        return self._timed("allgather", nbytes, self._allgather_s, self._allgather_s)

    def _alltoall_s(self, nbytes):
        paths = self.oneshot_paths if self.algorithm != "custom" else ()   # custom: those run below link speed
        if not paths:
            assert self._all_pairs is not None, "an all-to-all needs every rank's routes"
            paths = self.oneshot_paths_all = tuple(tuple(row) for row in self._all_pairs())
        return oneshot_schedule_s(paths, nbytes / self.n) + self.software_s

    def alltoall_s(self, nbytes):
        """All-to-all where each rank's ``nbytes`` buffer holds an equal part for every rank:
        every rank sends ``nbytes / n`` straight to each other rank, all at once (the pattern
        of expert-parallel dispatch and combine; NCCL's tuning model has no all-to-all, so
        ``nccl_model`` groups use this schedule too)."""
        if self.n <= 1:
            return 0.0 * nbytes
        if isinstance(nbytes, np.ndarray):
            return self._cached_array("alltoall", nbytes, self._alltoall_s)
        key = ("alltoall", nbytes)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self._alltoall_s(nbytes)
        return t
