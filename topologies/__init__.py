"""Where the GPUs are and how they are connected: topology graphs for the simulator.

Pure networkx (plus the standard library); this package never imports ``sim``,
``simpy``, ``workloads``, ``hydra`` or ``omegaconf``.

Attribute contract
==================
Enforced by :func:`validate` (builders and :func:`load` call it).

Graph
    A :class:`networkx.DiGraph` (not a multigraph). Every physical full-duplex link is
    **two** directed edges, one per direction, each carrying that direction's bandwidth.
    Graph attributes: ``name`` (non-empty str) and ``gpus_per_node`` (int >= 1).

Nodes
    Attribute ``kind`` in {"gpu", "nvswitch", "pcie_switch", "cpu", "nic", "ib_switch"}.
    GPU nodes are named ``"gpu{i}"`` with global index ``i = 0..N-1``, contiguous and
    node-major: local rank ``r`` of server ``n`` is ``i = n*gpus_per_node + r``; they
    carry ``server`` (int >= 0) and ``local_rank`` (int in [0, gpus_per_node)). No other
    kind may use a ``gpu{i}`` name. Other attributes are allowed and ignored.

Edges
    ``latency_us``: float > 0, finite: per-hop latency of that direction of the link,
    wire plus switch traversal (a path's latency is the sum over its edges).
    ``bandwidth_GBps``: float > 0, finite: one direction, GB/s = 1e9 bytes/s (a path's
    bandwidth is the minimum over its edges).
    ``link`` in {"nvlink", "pcie", "infiniband", "infinity_fabric", "ethernet"}.
    Every edge ``(u, v)`` has its reverse ``(v, u)``, and every GPU reaches every GPU.

Latency conventions of the builders (NCCL LL per-hop constants: NVLink 0.6 us, PCIe
1.0 us, network 5 us; details in :mod:`topologies.builders`): a switch hop is split in
half between the two edges through the switch, so GPU -> NVSwitch -> GPU costs the NVLink
hop (0.6 us), GPU -> PCIe switch -> GPU the PCIe hop, and a cross-node same-rail pair
GPU -> NIC -> IB leaf -> NIC -> GPU costs ``2*pcie_latency_us + ib_latency_us``.

Public API
==========
- builders: :func:`hgx_node`, :func:`multi_node_ib`, :func:`pcie_box`, :func:`nvl72_rack`
- registry: :func:`build_topology` (kinds "hgx", "multi_node_ib", "pcie_box", "nvl72",
  "file"), :data:`BUILDERS`
- paths: :class:`PathTable` (cached ``.edges / .latency_us / .bottleneck_GBps / .hops``),
  :func:`path`, :func:`path_latency_us`, :func:`path_bottleneck_GBps`, :func:`gpu_nodes`,
  :func:`gpu_count`, :func:`scaled`
- contract: :class:`TopologyError`, :func:`validate`, :data:`NODE_KINDS`, :data:`LINK_KINDS`
- io: :func:`save`, :func:`load`
"""

from topologies.builders import hgx_node, multi_node_ib, nvl72_rack, pcie_box
from topologies.contract import (
    LINK_KINDS,
    NODE_KINDS,
    TopologyError,
    gpu_index,
    gpu_name,
    validate,
)
from topologies.io import load, save
from topologies.paths import (
    PathTable,
    Route,
    gpu_count,
    gpu_nodes,
    path,
    path_bottleneck_GBps,
    path_latency_us,
    scaled,
)
from topologies.registry import BUILDERS, build_topology

__all__ = [
    "BUILDERS",
    "LINK_KINDS",
    "NODE_KINDS",
    "PathTable",
    "Route",
    "TopologyError",
    "build_topology",
    "gpu_count",
    "gpu_index",
    "gpu_name",
    "gpu_nodes",
    "hgx_node",
    "load",
    "multi_node_ib",
    "nvl72_rack",
    "path",
    "path_bottleneck_GBps",
    "path_latency_us",
    "pcie_box",
    "save",
    "scaled",
    "validate",
]
