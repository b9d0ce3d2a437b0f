"""The attribute contract every topology graph obeys, and the one function that checks it.

See the package docstring (:mod:`topologies`) for the contract in prose. ``validate`` is
the executable form: builders call it before returning, :func:`topologies.io.load` calls
it after reading, and anything that hands a graph to the simulator should too.

Each violation raises :class:`TopologyError` with a single line that names the offending
node or edge, the bad value, and what is allowed, so a config error is fixed from the
message alone.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real

import networkx as nx

__all__ = [
    "GPU_NAME",
    "LINK_KINDS",
    "NODE_KINDS",
    "TopologyError",
    "gpu_index",
    "gpu_name",
    "validate",
]

#: Allowed values of the node attribute ``kind``.
NODE_KINDS: frozenset[str] = frozenset(
    {"gpu", "nvswitch", "pcie_switch", "cpu", "nic", "ib_switch"}
)

#: Allowed values of the edge attribute ``link``.
LINK_KINDS: frozenset[str] = frozenset(
    {"nvlink", "pcie", "infiniband", "infinity_fabric", "ethernet"}
)

#: GPU node names: ``gpu`` followed by the global index, no leading zeros.
GPU_NAME = re.compile(r"gpu(0|[1-9][0-9]*)")


class TopologyError(ValueError):
    """A topology graph, a builder parameter or a registry request breaks the contract."""


def gpu_name(index: int) -> str:
    """Node name of the GPU with global index ``index``."""
    return f"gpu{index}"


def gpu_index(name: str) -> int:
    """Global index encoded in a GPU node name (``"gpu12"`` -> 12)."""
    match = GPU_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise TopologyError(f"node {name!r} is not a GPU name; expected 'gpu<index>' such as 'gpu0'")
    return int(match.group(1))


def _allowed(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive_finite(value: object) -> bool:
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) > 0.0
    )


def validate(graph: nx.DiGraph) -> nx.DiGraph:
    """Check ``graph`` against the attribute contract; return it unchanged if it holds.

    Raises :class:`TopologyError` (one line naming the node/edge, the value and what is
    allowed) on the first violation found.
    """
    _validate(graph, first_index=0)
    return graph


def _validate(graph: nx.DiGraph, *, first_index: int) -> None:
    """Contract check; GPU indices must be contiguous from ``first_index``.

    ``first_index`` is only non-zero for the composable single-node fragments that
    :func:`topologies.builders.hgx_node` returns when given ``server != 0``.
    """
    if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
        raise TopologyError(
            f"topology must be a networkx.DiGraph, got {type(graph).__name__}"
        )

    name = graph.graph.get("name")
    if not isinstance(name, str) or not name:
        raise TopologyError(
            f"graph attribute 'name'={name!r} is not allowed; must be a non-empty str"
        )
    gpus_per_node = graph.graph.get("gpus_per_node")
    if not _is_int(gpus_per_node) or gpus_per_node < 1:
        raise TopologyError(
            f"graph attribute 'gpus_per_node'={gpus_per_node!r} is not allowed; must be an int >= 1"
        )

    indices: list[int] = []
    for node, data in graph.nodes(data=True):
        kind = data.get("kind")
        if kind not in NODE_KINDS:
            raise TopologyError(
                f"node {node!r}: kind={kind!r} is not allowed; must be one of {_allowed(NODE_KINDS)}"
            )
        named_like_gpu = isinstance(node, str) and GPU_NAME.fullmatch(node) is not None
        if kind != "gpu":
            if named_like_gpu:
                raise TopologyError(
                    f"node {node!r}: kind={kind!r} but the name is reserved for GPUs; "
                    "rename it or set kind='gpu'"
                )
            continue
        if not named_like_gpu:
            raise TopologyError(
                f"GPU node {node!r}: name is not allowed; GPU nodes must be named 'gpu<index>'"
            )
        index = gpu_index(node)
        server = data.get("server")
        local_rank = data.get("local_rank")
        if not _is_int(server) or server < 0:
            raise TopologyError(
                f"GPU node {node!r}: server={server!r} is not allowed; must be an int >= 0"
            )
        if not _is_int(local_rank) or not 0 <= local_rank < gpus_per_node:
            raise TopologyError(
                f"GPU node {node!r}: local_rank={local_rank!r} is not allowed; "
                f"must be an int in [0, {gpus_per_node - 1}] (gpus_per_node={gpus_per_node})"
            )
        expected = server * gpus_per_node + local_rank
        if index != expected:
            raise TopologyError(
                f"GPU node {node!r}: index {index} does not match server={server}, "
                f"local_rank={local_rank}; must be server*gpus_per_node+local_rank={expected}"
            )
        indices.append(index)

    if not indices:
        raise TopologyError(f"topology {name!r} has no GPU nodes; at least one node needs kind='gpu'")
    indices.sort()
    expected_indices = range(first_index, first_index + len(indices))
    if indices != list(expected_indices):
        missing = sorted(set(expected_indices) - set(indices))
        first_bad = gpu_name(missing[0]) if missing else gpu_name(indices[-1])
        raise TopologyError(
            f"GPU indices are not contiguous: {first_bad!r} is missing or out of range; "
            f"must be gpu{first_index}..gpu{first_index + len(indices) - 1}"
        )

    for u, v, data in graph.edges(data=True):
        edge = (u, v)
        if u == v:
            raise TopologyError(f"edge {edge!r} is a self-loop; links must join two distinct nodes")
        for attr in ("latency_us", "bandwidth_GBps"):
            value = data.get(attr)
            if not _positive_finite(value):
                raise TopologyError(
                    f"edge {edge!r}: {attr}={value!r} is not allowed; must be a finite number > 0"
                )
        link = data.get("link")
        if link not in LINK_KINDS:
            raise TopologyError(
                f"edge {edge!r}: link={link!r} is not allowed; must be one of {_allowed(LINK_KINDS)}"
            )
        if not graph.has_edge(v, u):
            raise TopologyError(
                f"edge {edge!r} has no reverse edge {(v, u)!r}; every full-duplex link "
                "must be two directed edges"
            )

    gpus = [gpu_name(i) for i in indices]
    reachable = nx.descendants(graph, gpus[0])
    for gpu in gpus[1:]:
        if gpu not in reachable:
            raise TopologyError(
                f"GPU pair ({gpus[0]!r}, {gpu!r}) is not connected; every GPU must reach every other GPU"
            )


def check_positive(name: str, value: object) -> float:
    """A finite number > 0 (not a bool), or a one-line TopologyError naming the parameter."""
    if (
        not isinstance(value, Real)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
        or float(value) <= 0.0
    ):
        raise TopologyError(f"parameter {name}={value!r} is not allowed; must be a finite number > 0")
    return float(value)
