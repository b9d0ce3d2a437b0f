"""The cluster's wiring as a cost model: routes between GPUs and collective costs per group.

Pure (no SimPy). Wraps a topology graph at its datasheet values, the ``network.latency_scale``
and ``network.bandwidth_scale`` what-ifs and the engine's collective settings; both network
fidelities and the step-time predictor take their numbers from here, so they cannot drift
apart. Built by :func:`sim.build.make_fabric` only.
"""
from __future__ import annotations

from typing import Sequence

import networkx as nx

from sim.cost.collectives import GroupCollectives, PairPath
from sim.spec.engine import EngineProfile
from topologies import PathTable


class Fabric:
    """Routes and collective cost models over one topology."""

    def __init__(self, graph: nx.DiGraph, engine: EngineProfile, oneshot_capable: bool = True,
                 latency_scale: float = 1.0, bandwidth_scale: float = 1.0) -> None:
        self.graph = graph
        # network.latency_scale scales the whole per-message latency: every link hop (in
        # :meth:`link`), the collective's software latency (here) and NCCL's per-hop constants
        # (``nccl_model_s``); network.bandwidth_scale every link's bandwidth (in :meth:`link`).
        # This is the only place either scale is applied.
        self.latency_scale, self.bandwidth_scale = latency_scale, bandwidth_scale
        self.software_s = engine.collective_software_us * 1e-6 * latency_scale
        self.paths = PathTable(graph)
        self.engine = engine
        self.oneshot_capable = oneshot_capable
        self.gpus = self.paths.gpus
        self._groups: dict[tuple[str, ...], GroupCollectives] = {}
        self._shapes: dict[tuple, GroupCollectives] = {}
        self._pairs: dict[tuple[str, str], PairPath] = {}

    def pair(self, src: str, dst: str) -> PairPath:
        key = (src, dst)
        p = self._pairs.get(key)
        if p is None:
            p = PairPath(tuple((e, *self.link(e)) for e in self.paths.edges(src, dst)))
            self._pairs[key] = p
        return p

    def peer(self, src: str, dst: str) -> PairPath:
        """The route of a peer-memory copy by an all-reduce kernel: under the engine's custom
        all-reduce, every hop at ``p2p_link_efficiency`` of its bandwidth."""
        p = self.pair(src, dst)
        eff = self.engine.p2p_link_efficiency
        if self.engine.allreduce_algorithm != "custom" or eff == 1.0:
            return p
        return PairPath(tuple((edge, lat, bw * eff) for edge, lat, bw in p.hops))

    def edges(self, src: str, dst: str):
        return self.paths.edges(src, dst)

    def link(self, edge) -> tuple[float, float]:
        """(latency_s, bandwidth_Bps) of one directed edge, with the network's what-if scales."""
        data = self.graph.edges[edge]
        return (data["latency_us"] * self.latency_scale * 1e-6,
                data["bandwidth_GBps"] * self.bandwidth_scale * 1e9)

    def over_pcie(self, ranks: Sequence[str]) -> bool:
        """Whether the group's GPUs talk over PCIe (no NVLink P2P for one-shot kernels)."""
        return len(ranks) > 1 and any(self.graph.edges[e].get("link") == "pcie" for e in self.paths.edges(ranks[0], ranks[1]))

    def same_server(self, ranks: Sequence[str]) -> bool:
        return len({self.graph.nodes[r]["server"] for r in ranks}) == 1

    def group(self, ranks: Sequence[str]) -> GroupCollectives:
        """Collective costs for ``ranks`` (ring order = the given order).

        Groups whose routes have the same shape — the same hop latencies and bandwidths, the
        same links shared between routes — share one cost model (and its caches): every
        pipeline stage's tensor-parallel group of a deployment, say, costs the same.
        """
        key = tuple(ranks)
        g = self._groups.get(key)
        if g is None:
            g = self._build_group(key)
            shape = g.shape_key()
            g = self._shapes.setdefault(shape, g)
            self._groups[key] = g
        return g

    def _build_group(self, key: tuple[str, ...]) -> GroupCollectives:
        n = len(key)
        e = self.engine
        ring = [self.pair(key[r], key[(r + 1) % n]) for r in range(n)] if n > 1 else []
        oneshot_ok = (self.oneshot_capable and self.same_server(key)
                      and e.allreduce_algorithm in ("auto", "oneshot", "custom") and not self.over_pcie(key))
        # every rank's route to every other rank: only where one-shot kernels can run (the
        # custom all-reduce's peer-memory reads at their achieved share of each link)
        oneshot = ([[self.peer(key[r], key[(r + k) % n]) for k in range(1, n)] for r in range(n)]
                   if n > 1 and oneshot_ok else [])
        servers = [self.graph.nodes[r]["server"] for r in key]
        per_node = max(servers.count(s) for s in set(servers))
        channels = [[self.pair(order[r], order[(r + 1) % n]) for r in range(n)]
                    for order in self.channel_orders(key)]
        g = GroupCollectives(ring, oneshot, self.software_s, e.allreduce_algorithm,
                             e.oneshot_max_bytes, oneshot_ok,
                             ranks_per_node=per_node, nodes=len(set(servers)), latency_scale=self.latency_scale,
                             channels=channels if len(channels) > 1 else None,
                             hop_us=self.nccl_hop_us(key) if self.graph.graph.get("nccl_hops") == "links" else None,
                             all_pairs=lambda: [[self.pair(key[r], key[(r + k) % n]) for k in range(1, n)]
                                                for r in range(n)])
        return g

    def nccl_hop_us(self, ranks: Sequence[str]) -> tuple[float, float]:
        """(intra-node, network) per-hop latency in us of this group's links, for ``nccl_model``.

        Intra-node hop: the mean route latency between ring neighbours on one server (GPU ->
        NVSwitch -> GPU, or GPU -> PCIe -> GPU). Network hop: the network-link part
        (``infiniband``/``ethernet`` edges; the GPU-NIC PCIe hops are left out, as in NCCL's
        ``hwLat[NET]``) of the cheapest route from the first rank to another server. Both are
        the graph's own values (``nccl_model_s`` applies ``network.latency_scale``). A group
        without such pairs gets NCCL's LL constant for that hop (it is multiplied by 0 then).
        """
        n, server = len(ranks), (lambda r: self.graph.nodes[r]["server"])
        edges = self.graph.edges
        intra = [sum(edges[e]["latency_us"] * 1e-6 for e in self.paths.edges(ranks[r], ranks[(r + 1) % n]))
                 for r in range(n) if n > 1 and server(ranks[r]) == server(ranks[(r + 1) % n])]
        net = [sum(edges[e]["latency_us"] for e in self.paths.edges(ranks[0], r)
                   if edges[e].get("link") in ("infiniband", "ethernet"))
               for r in ranks if server(r) != server(ranks[0])]
        intra_us = sum(intra) / len(intra) * 1e6 if intra else 0.6
        net_us = min(net) if net else 5.0
        return intra_us, net_us

    def channel_orders(self, ranks: Sequence[str]) -> list[list[str]]:
        """Ring orders NCCL-style channels use: across nodes, one ring per local rank position,
        each rotating every node's block so that its node-to-node hops leave from a different
        GPU (and so a different NIC/rail); within one node, the single given order."""
        blocks: dict[int, list[str]] = {}
        for r in ranks:
            blocks.setdefault(self.graph.nodes[r]["server"], []).append(r)
        sizes = {len(b) for b in blocks.values()}
        if len(blocks) == 1 or len(sizes) != 1 or sizes == {1}:
            return [list(ranks)]
        m = sizes.pop()
        return [[r for b in blocks.values() for r in (b[c:] + b[:c])] for c in range(m)]

    def send_s(self, src: str, dst: str, nbytes: float) -> float:
        """Point-to-point send including the engine's software latency."""
        return self.pair(src, dst).send(0.0, nbytes, {}) + self.software_s
