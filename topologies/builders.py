"""Builders for common GPU-cluster topologies.

Every builder returns a fresh :class:`networkx.DiGraph` that satisfies the contract in
:mod:`topologies` (checked by :func:`topologies.contract.validate` before returning).
Physical full-duplex links become two directed edges with equal attributes.

Latency conventions (the part that is a modelling choice; the constants are NCCL's
per-hop LL latencies from ``src/graph/tuning.cc``: NVLink 0.6 us, PCIe 1.0 us,
network 5 us; see ``/work/shared/reference/published_numbers.md`` section 2.1):

* Switched domains (NVSwitch, Infinity Fabric, NVL72) are one logical ``nvswitch`` node.
  Each GPU-switch edge carries **half** the GPU-to-GPU latency, so GPU -> switch -> GPU
  totals ``nvlink_latency_us``. Each GPU-switch edge carries the GPU's full per-direction
  scale-up bandwidth (the switch itself is non-blocking).
* InfiniBand (:func:`multi_node_ib`): each GPU-NIC edge is one PCIe hop carrying the full
  ``pcie_latency_us``; each NIC-leaf edge carries **half** of ``ib_latency_us``. A
  same-rail (or, without rail optimization, any) cross-node GPU pair
  GPU -> NIC -> leaf -> NIC -> GPU therefore totals ``2*pcie_latency_us + ib_latency_us``
  with bottleneck ``min(ib_bandwidth_GBps, pcie_bandwidth_GBps)``. Leaf-spine edges also
  carry ``ib_latency_us / 2`` each, so every extra switch tier crossed (up and down) adds
  one ``ib_latency_us``; they carry the sum of the leaf's downlinks (a non-blocking fat
  tree), so the spine is never the bottleneck of a single flow.
* PCIe boxes (:func:`pcie_box`): every edge (GPU-switch, switch-CPU) carries
  ``pcie_latency_us / 2``: two GPUs under one switch total ``pcie_latency_us``, two GPUs
  under different switches go through the CPU root complex and total
  ``2*pcie_latency_us``. The switch-CPU uplink is one x16 link (``pcie_bandwidth_GBps``)
  shared by the switch's GPUs.
"""

from __future__ import annotations

from numbers import Integral

import networkx as nx

from topologies.contract import LINK_KINDS, TopologyError, _validate, check_positive, gpu_name, validate

__all__ = ["hgx_node", "multi_node_ib", "nvl72_rack", "pcie_box"]


# --------------------------------------------------------------------------- checks


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise TopologyError(f"parameter {name}={value!r} is not allowed; must be an int >= {minimum}")
    return int(value)


def _check_link(name: str, value: object) -> str:
    if value not in LINK_KINDS:
        raise TopologyError(
            f"parameter {name}={value!r} is not allowed; must be one of {', '.join(sorted(LINK_KINDS))}"
        )
    return str(value)


def _add_link(
    graph: nx.DiGraph, a: str, b: str, *, latency_us: float, bandwidth_GBps: float, link: str
) -> None:
    """Add one full-duplex link as two directed edges with equal attributes."""
    attrs = {"latency_us": latency_us, "bandwidth_GBps": bandwidth_GBps, "link": link}
    graph.add_edge(a, b, **attrs)
    graph.add_edge(b, a, **attrs)


# --------------------------------------------------------------------------- builders


def hgx_node(
    gpus: int = 8,
    nvlink_bandwidth_GBps: float = 450.0,
    nvlink_latency_us: float = 0.6,
    link: str = "nvlink",
    server: int = 0,
    prefix: str = "",
) -> nx.DiGraph:
    """One HGX/DGX node: ``gpus`` GPUs on one logical NVSwitch.

    GPU ``gpu{server*gpus + r}`` (local rank ``r``) connects to the switch node
    ``f"{prefix}nvswitch"`` by a duplex link whose edges carry ``nvlink_latency_us / 2``
    and ``nvlink_bandwidth_GBps`` each, so every GPU pair is 2 hops, ``nvlink_latency_us``
    and ``nvlink_bandwidth_GBps`` apart. Defaults: H100 SXM (NVLink4, 450 GB/s per
    direction; NCCL's 0.6 us NVLink hop). For an MI300X Infinity Fabric node pass
    ``link="infinity_fabric"`` (and e.g. ``nvlink_bandwidth_GBps=448.0``, half of 896).

    ``server`` and ``prefix`` exist for composing multi-node graphs: with ``server != 0``
    the GPU indices start at ``server*gpus``, and the result is a *fragment* (validated
    except that indices do not start at 0; :func:`~topologies.contract.validate` rejects
    it on its own). Give each composed node a distinct ``prefix`` so switch names differ.
    """
    gpus = _check_count("gpus", gpus)
    bandwidth = check_positive("nvlink_bandwidth_GBps", nvlink_bandwidth_GBps)
    latency = check_positive("nvlink_latency_us", nvlink_latency_us)
    link = _check_link("link", link)
    server = _check_count("server", server, minimum=0)
    if not isinstance(prefix, str):
        raise TopologyError(f"parameter prefix={prefix!r} is not allowed; must be a str")

    graph = nx.DiGraph(name=f"hgx_{gpus}gpu_{link}", gpus_per_node=gpus)
    switch = f"{prefix}nvswitch"
    graph.add_node(switch, kind="nvswitch", server=server)
    for rank in range(gpus):
        gpu = gpu_name(server * gpus + rank)
        graph.add_node(gpu, kind="gpu", server=server, local_rank=rank)
        _add_link(graph, gpu, switch, latency_us=latency / 2, bandwidth_GBps=bandwidth, link=link)
    _validate(graph, first_index=server * gpus)
    return graph


def nvl72_rack(
    gpus: int = 72,
    nvlink_bandwidth_GBps: float = 900.0,
    nvlink_latency_us: float = 0.6,
    link: str = "nvlink",
) -> nx.DiGraph:
    """One NVLink domain of ``gpus`` GPUs (GB200 NVL72 style) on one logical NVSwitch.

    Same shape and conventions as :func:`hgx_node` with ``gpus_per_node = gpus`` (the whole
    rack is one scale-up domain; all GPUs have ``server=0``). Default bandwidth: NVLink5,
    1.8 TB/s bidirectional = 900 GB/s per direction. The latency default keeps NCCL's
    0.6 us NVLink hop: the multi-tray NVSwitch fabric is modelled as one logical switch.
    """
    graph = hgx_node(
        gpus=gpus,
        nvlink_bandwidth_GBps=nvlink_bandwidth_GBps,
        nvlink_latency_us=nvlink_latency_us,
        link=link,
    )
    graph.graph["name"] = f"nvl{gpus}_{link}"
    return validate(graph)


def multi_node_ib(
    nodes: int,
    gpus_per_node: int = 8,
    nvlink_bandwidth_GBps: float = 450.0,
    nvlink_latency_us: float = 0.6,
    ib_bandwidth_GBps: float = 50.0,
    ib_latency_us: float = 5.0,
    pcie_bandwidth_GBps: float = 64.0,
    pcie_latency_us: float = 1.0,
    rail_optimized: bool = True,
    link: str = "nvlink",
) -> nx.DiGraph:
    """``nodes`` HGX nodes joined by InfiniBand, one NIC per GPU.

    Per node ``n`` (built by :func:`hgx_node` with ``prefix=f"node{n}."``): switch
    ``node{n}.nvswitch``; the GPU of local rank ``r`` has NIC ``node{n}.nic{r}`` on a PCIe
    link (``pcie_latency_us`` per edge, ``pcie_bandwidth_GBps``).

    * ``rail_optimized=True``: NIC ``r`` of every node connects to leaf ``rail{r}``
      (``ib_switch``, ``tier="leaf"``); every leaf connects to ``spine`` (``tier="spine"``).
    * ``rail_optimized=False``: every NIC connects to one leaf ``ib_leaf`` (a flat,
      non-blocking fat tree seen as one switch); no spine.

    NIC-leaf edges carry ``ib_latency_us / 2`` and ``ib_bandwidth_GBps``; leaf-spine edges
    ``ib_latency_us / 2`` and ``nodes * ib_bandwidth_GBps`` (non-blocking). Resulting path
    latencies (minimum-latency routing):

    * same node: ``nvlink_latency_us`` (through the NVSwitch);
    * different nodes, same rail (or any pair when not rail-optimized):
      GPU -> NIC -> leaf -> NIC -> GPU = ``2*pcie_latency_us + ib_latency_us``, bottleneck
      ``min(ib_bandwidth_GBps, pcie_bandwidth_GBps)``;
    * different nodes and rails (rail-optimized): the cheaper of one NVLink detour plus
      one rail (``nvlink_latency_us + 2*pcie_latency_us + ib_latency_us``; the detour is
      in the source or the destination node, equal latency, the name tie-break picks) and
      crossing the spine (``2*pcie_latency_us + 2*ib_latency_us``); with the defaults
      that is the NVLink detour, 7.6 us, bottleneck ``min(nvlink, pcie, ib)``.

    Defaults: H100 HGX with ConnectX-7 NDR (400 Gb/s = 50 GB/s line rate per NIC, NCCL
    measures 46-48), PCIe Gen5 x16 (64 GB/s per direction), NCCL hop latencies.
    """
    nodes = _check_count("nodes", nodes)
    gpus_per_node = _check_count("gpus_per_node", gpus_per_node)
    ib_bw = check_positive("ib_bandwidth_GBps", ib_bandwidth_GBps)
    ib_lat = check_positive("ib_latency_us", ib_latency_us)
    pcie_bw = check_positive("pcie_bandwidth_GBps", pcie_bandwidth_GBps)
    pcie_lat = check_positive("pcie_latency_us", pcie_latency_us)
    if not isinstance(rail_optimized, bool):
        raise TopologyError(f"parameter rail_optimized={rail_optimized!r} is not allowed; must be a bool")

    graph = nx.DiGraph(
        name=f"multi_node_ib_{nodes}x{gpus_per_node}_{'rail' if rail_optimized else 'leaf'}",
        gpus_per_node=gpus_per_node,
    )
    for n in range(nodes):
        node_graph = hgx_node(
            gpus=gpus_per_node,
            nvlink_bandwidth_GBps=nvlink_bandwidth_GBps,
            nvlink_latency_us=nvlink_latency_us,
            link=link,
            server=n,
            prefix=f"node{n}.",
        )
        graph.add_nodes_from(node_graph.nodes(data=True))
        graph.add_edges_from(node_graph.edges(data=True))

    if rail_optimized:
        graph.add_node("spine", kind="ib_switch", tier="spine")
        for r in range(gpus_per_node):
            graph.add_node(f"rail{r}", kind="ib_switch", tier="leaf", rail=r)
            _add_link(
                graph, f"rail{r}", "spine",
                latency_us=ib_lat / 2, bandwidth_GBps=nodes * ib_bw, link="infiniband",
            )
    else:
        graph.add_node("ib_leaf", kind="ib_switch", tier="leaf")

    for n in range(nodes):
        for r in range(gpus_per_node):
            gpu = gpu_name(n * gpus_per_node + r)
            nic = f"node{n}.nic{r}"
            leaf = f"rail{r}" if rail_optimized else "ib_leaf"
            graph.add_node(nic, kind="nic", server=n, local_rank=r)
            _add_link(graph, gpu, nic, latency_us=pcie_lat, bandwidth_GBps=pcie_bw, link="pcie")
            _add_link(graph, nic, leaf, latency_us=ib_lat / 2, bandwidth_GBps=ib_bw, link="infiniband")
    return validate(graph)


def pcie_box(
    gpus: int = 8,
    pcie_bandwidth_GBps: float = 32.0,
    pcie_latency_us: float = 1.0,
    gpus_per_switch: int = 4,
) -> nx.DiGraph:
    """One server of GPUs without NVLink (RTX 4090 / L40S class) on PCIe switches.

    GPUs ``gpu0..gpu{gpus-1}`` (all ``server=0``, ``local_rank = index``) sit in order
    under switches ``pcie_switch{k}`` (``gpus_per_switch`` each, the last one takes the
    remainder); every switch connects to the root complex ``cpu0`` (one CPU, so no
    cross-socket hop). Every edge carries ``pcie_latency_us / 2`` and
    ``pcie_bandwidth_GBps``: same-switch pairs total ``pcie_latency_us`` (2 hops),
    cross-switch pairs ``2*pcie_latency_us`` (4 hops, through the CPU). The default
    32 GB/s is PCIe Gen4 x16 per direction (64 GB/s bidirectional).
    ``gpus_per_node = gpus``.
    """
    gpus = _check_count("gpus", gpus)
    bandwidth = check_positive("pcie_bandwidth_GBps", pcie_bandwidth_GBps)
    latency = check_positive("pcie_latency_us", pcie_latency_us)
    gpus_per_switch = _check_count("gpus_per_switch", gpus_per_switch)

    graph = nx.DiGraph(name=f"pcie_box_{gpus}gpu", gpus_per_node=gpus)
    graph.add_node("cpu0", kind="cpu")
    for i in range(gpus):
        switch = f"pcie_switch{i // gpus_per_switch}"
        if switch not in graph:
            graph.add_node(switch, kind="pcie_switch")
            _add_link(graph, switch, "cpu0", latency_us=latency / 2, bandwidth_GBps=bandwidth, link="pcie")
        gpu = gpu_name(i)
        graph.add_node(gpu, kind="gpu", server=0, local_rank=i)
        _add_link(graph, gpu, switch, latency_us=latency / 2, bandwidth_GBps=bandwidth, link="pcie")
    return validate(graph)
