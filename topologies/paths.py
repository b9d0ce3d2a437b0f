"""Routes between GPUs and what they cost.

Routing is minimum total latency (sum of ``latency_us`` along the directed edges), ties
broken by fewest hops, then by the lexicographic order of the node names along the path,
so a route is a pure function of the graph. Latencies are compared *exactly* (every float
is turned into an integer multiple of 2**-1074), and a route's latency is reported as the
correctly rounded sum (:func:`math.fsum`), so the result never depends on summation
order: with symmetric links ``latency_us(a, b) == latency_us(b, a)`` holds bit for bit.

:class:`PathTable` is the cached form: it snapshots the graph's edges when built and runs
one single-source search per source on first use. :func:`path` is the one-shot,
uncached form. There are no module-level caches.

A path is a tuple of directed edges ``((u0, u1), (u1, u2), ...)``; the path from a node
to itself is ``()``, with latency 0 and bottleneck ``math.inf``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import networkx as nx

from topologies.contract import TopologyError, check_positive, gpu_index, validate

__all__ = [
    "Edge",
    "Path",
    "PathTable",
    "Route",
    "gpu_count",
    "gpu_nodes",
    "path",
    "path_bottleneck_GBps",
    "path_latency_us",
    "scaled",
]

Edge = tuple[Hashable, Hashable]
Path = tuple[Edge, ...]

# Every finite double is an integer multiple of 2**-1074, so scaling by 2**1074 makes
# latencies exact Python ints: sums and comparisons are then exact and order-free.
_EXACT_SHIFT = 1074


def _exact(value: float) -> int:
    numerator, denominator = float(value).as_integer_ratio()
    return numerator << (_EXACT_SHIFT - denominator.bit_length() + 1)


def gpu_nodes(graph: nx.DiGraph) -> list[str]:
    """GPU node names ordered by global index (``gpu0, gpu1, ...``)."""
    return sorted(
        (node for node, kind in graph.nodes(data="kind") if kind == "gpu"), key=gpu_index
    )


def gpu_count(graph: nx.DiGraph) -> int:
    """Number of GPU nodes."""
    return sum(1 for _, kind in graph.nodes(data="kind") if kind == "gpu")


def path_latency_us(graph: nx.DiGraph, edges: Iterable[Edge]) -> float:
    """Total latency of ``edges`` (correctly rounded sum of their ``latency_us``)."""
    return math.fsum(graph.edges[u, v]["latency_us"] for u, v in edges)


def path_bottleneck_GBps(graph: nx.DiGraph, edges: Iterable[Edge]) -> float:
    """Smallest ``bandwidth_GBps`` along ``edges`` (``math.inf`` for the empty path)."""
    return min((graph.edges[u, v]["bandwidth_GBps"] for u, v in edges), default=math.inf)


def scaled(
    graph: nx.DiGraph, latency_scale: float = 1.0, bandwidth_scale: float = 1.0
) -> nx.DiGraph:
    """Copy of ``graph`` with every edge's ``latency_us`` and ``bandwidth_GBps`` multiplied.

    For what-if sweeps (e.g. "halve every hop latency"). Both scales must be finite and
    > 0. Node and graph attributes (including the name) are copied unchanged.
    """
    for name, value in (("latency_scale", latency_scale), ("bandwidth_scale", bandwidth_scale)):
        check_positive(name, value)
    result = graph.copy()
    for _, _, data in result.edges(data=True):
        data["latency_us"] = data["latency_us"] * float(latency_scale)
        data["bandwidth_GBps"] = data["bandwidth_GBps"] * float(bandwidth_scale)
    return result


# ----------------------------------------------------------------------------- search

_Adjacency = dict[Hashable, list[tuple[Hashable, int, str]]]


def _adjacency(graph: nx.DiGraph) -> _Adjacency:
    """Snapshot of out-edges as ``node -> [(neighbour, exact latency, neighbour's name)]``."""
    return {
        node: [(nbr, _exact(data["latency_us"]), str(nbr)) for nbr, data in graph.adj[node].items()]
        for node in graph.nodes
    }


def _search(adjacency: _Adjacency, source: Hashable, target: Hashable | None = None) -> dict:
    """Label-setting Dijkstra on the key (exact latency, hops, node names along the path).

    The key is monotone under extension (equal-length name tuples compare like their
    extensions), so the first time a node is popped its route is final. Returns
    ``node -> tuple of nodes`` for every node reached (only up to ``target`` if given).
    """
    start = (0, 0, (str(source),))
    best: dict[Hashable, tuple] = {source: start}
    heap: list = [(*start, (source,))]
    done: dict[Hashable, tuple[Hashable, ...]] = {}
    while heap:
        latency, hops, names, nodes = heapq.heappop(heap)
        node = nodes[-1]
        if node in done:
            continue
        done[node] = nodes
        if node == target:
            break
        for nbr, edge_latency, nbr_name in adjacency[node]:
            if nbr in done:
                continue
            total = latency + edge_latency
            known = best.get(nbr)
            if known is not None and total > known[0]:
                continue        # longer: no need to build its key
            key = (total, hops + 1, (*names, nbr_name))
            if known is None or key < known:
                best[nbr] = key
                heapq.heappush(heap, (*key, (*nodes, nbr)))
    return done


def _as_edges(nodes: Sequence[Hashable]) -> Path:
    return tuple(zip(nodes[:-1], nodes[1:]))


def _require_node(graph: nx.DiGraph, node: Hashable) -> None:
    if node not in graph:
        raise TopologyError(
            f"node {node!r} is not in topology {graph.graph.get('name')!r}; GPUs are "
            f"gpu0..gpu{gpu_count(graph) - 1}"
        )


def path(graph: nx.DiGraph, src: Hashable, dst: Hashable) -> Path:
    """Minimum-latency route from ``src`` to ``dst`` as a tuple of directed edges.

    Uncached (one search per call); use :class:`PathTable` for repeated queries.
    """
    _require_node(graph, src)
    _require_node(graph, dst)
    reached = _search(_adjacency(graph), src, target=dst)
    if dst not in reached:
        raise TopologyError(f"no path from {src!r} to {dst!r} in topology {graph.graph.get('name')!r}")
    return _as_edges(reached[dst])


@dataclass(frozen=True, slots=True)
class Route:
    """One cached route: its edges, hop count, total latency and bottleneck bandwidth."""

    edges: Path
    latency_us: float
    bottleneck_GBps: float

    @property
    def hops(self) -> int:
        return len(self.edges)


class PathTable:
    """Cached minimum-latency routes of one topology.

    Built from a contract-valid graph (validated here); it snapshots the edge
    latencies, so build a new table after changing the graph (e.g. use :func:`scaled`,
    which returns a new graph). Routes from a source are computed on the first query from
    that source (one single-source search) and kept; :meth:`precompute` fills the table
    for every GPU source at once.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        validate(graph)
        self.graph = graph
        self.gpus: tuple[str, ...] = tuple(gpu_nodes(graph))
        self._adjacency = _adjacency(graph)
        self._bandwidth = {(u, v): bw for u, v, bw in graph.edges(data="bandwidth_GBps")}
        self._latency = {(u, v): lat for u, v, lat in graph.edges(data="latency_us")}
        self._reached: dict[Hashable, dict[Hashable, tuple[Hashable, ...]]] = {}
        self._routes: dict[tuple[Hashable, Hashable], Route] = {}

    def __repr__(self) -> str:
        return f"PathTable({self.graph.graph['name']!r}, gpus={len(self.gpus)})"

    def _from(self, src: Hashable) -> dict[Hashable, tuple[Hashable, ...]]:
        """Node sequences of the routes from ``src`` (one search per source, kept)."""
        reached = self._reached.get(src)
        if reached is None:
            _require_node(self.graph, src)
            reached = _search(self._adjacency, src)
            self._reached[src] = reached
        return reached

    def route(self, src: Hashable, dst: Hashable) -> Route:
        """The cached :class:`Route` from ``src`` to ``dst`` (built on first request)."""
        key = (src, dst)
        route = self._routes.get(key)
        if route is None:
            nodes = self._from(src).get(dst)
            if nodes is None:
                _require_node(self.graph, dst)
                raise TopologyError(
                    f"no path from {src!r} to {dst!r} in topology {self.graph.graph['name']!r}"
                )
            edges = _as_edges(nodes)
            route = Route(
                edges=edges,
                latency_us=math.fsum(self._latency[e] for e in edges),
                bottleneck_GBps=min((self._bandwidth[e] for e in edges), default=math.inf),
            )
            self._routes[key] = route
        return route

    def edges(self, src: Hashable, dst: Hashable) -> Path:
        """Directed edges of the route from ``src`` to ``dst``."""
        return self.route(src, dst).edges

    def latency_us(self, src: Hashable, dst: Hashable) -> float:
        """Sum of per-hop latencies along the route (0 for ``src == dst``)."""
        return self.route(src, dst).latency_us

    def bottleneck_GBps(self, src: Hashable, dst: Hashable) -> float:
        """Smallest per-direction bandwidth along the route (inf for ``src == dst``)."""
        return self.route(src, dst).bottleneck_GBps

    def hops(self, src: Hashable, dst: Hashable) -> int:
        """Number of directed edges along the route."""
        return self.route(src, dst).hops

    def precompute(self) -> PathTable:
        """Compute the routes from every GPU now; returns ``self``."""
        for gpu in self.gpus:
            self._from(gpu)
        return self
