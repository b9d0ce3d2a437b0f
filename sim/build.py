"""Composition root: turn a validated :class:`~sim.config.RunConfig` into wired objects.

Nothing else reads configuration. Registries are plain dicts. GPUs are placed
replica-major, then stage, then tensor rank (``gpu = replica*tp*pp + stage*tp + rank``), so a
tensor-parallel group fills consecutive GPUs of one node when ``tp`` divides the node size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import networkx as nx
import numpy as np
import simpy

import topologies
import workloads
from sim.config.parse import parse_config
from sim.config.presets import load_model
from sim.config.schema import RunConfig
from sim.cost.fabric import Fabric
from sim.cost.memory import KVCapacity, kv_capacity
from sim.cost.placement import draft_gpus, placement, shardable, tp_groups
from sim.cost.step_time import StepTimePredictor
from sim.errors import ConfigError, require
from sim.network.fidelity import CollectiveNetwork, MessageNetwork
from sim.policy.speculative import SpeculativeDecoder


def build_graph(cfg: RunConfig) -> nx.DiGraph:
    """The topology graph with link parameters from the hardware preset, then scaled."""
    t, hw, need = cfg.topology, cfg.hardware, cfg.gpus
    # topology.link_* override the hardware preset's scale-up link (fitted topologies).
    link_lat = t.link_latency_us if t.link_latency_us is not None else hw.scaleup_latency_us
    link_bw = t.link_bandwidth_GBps if t.link_bandwidth_GBps is not None else hw.scaleup_bandwidth_GBps
    try:
        if t.kind == "hgx":
            gpus = t.gpus_per_node
            require(need <= gpus, f"parallel needs {need} GPUs (tp*pp*dp) but topology=hgx has {gpus}; "
                                  f"use topology=multi_node_ib for more than one node")
            link = "infinity_fabric" if hw.scaleup_link == "infinity_fabric" else "nvlink"
            require(hw.scaleup_link != "pcie", f"hardware {hw.name} has no NVLink/NVSwitch; use topology=pcie_box")
            g = topologies.hgx_node(gpus, link_bw, link_lat, link=link)
        elif t.kind == "nvl72":
            g = topologies.nvl72_rack(72, link_bw, link_lat)
        elif t.kind == "multi_node_ib":
            require(hw.scaleup_link != "pcie", f"hardware {hw.name} has no NVLink/NVSwitch; use topology=pcie_box")
            nodes = -(-need // t.gpus_per_node) if t.nodes == "auto" else int(t.nodes)
            g = topologies.multi_node_ib(nodes, t.gpus_per_node, link_bw, link_lat,
                                         t.ib_bandwidth_GBps, t.ib_latency_us, hw.pcie_bandwidth_GBps,
                                         1.0, t.rail_optimized,
                                         link="infinity_fabric" if hw.scaleup_link == "infinity_fabric" else "nvlink")
        elif t.kind == "pcie_box":
            gpus = max(need, t.gpus_per_node)
            pcie_bw = hw.scaleup_bandwidth_GBps if hw.scaleup_link == "pcie" else hw.pcie_bandwidth_GBps
            pcie_lat = 1.0 if hw.scaleup_link != "pcie" else hw.scaleup_latency_us
            g = topologies.pcie_box(gpus, t.link_bandwidth_GBps if t.link_bandwidth_GBps is not None else pcie_bw,
                                    t.link_latency_us if t.link_latency_us is not None else pcie_lat, t.gpus_per_switch)
        else:
            g = topologies.load(t.path)
    except topologies.TopologyError as exc:
        raise ConfigError(f"topology: {exc}") from None
    have = topologies.gpu_count(g)
    require(need <= have, f"parallel needs {need} GPUs ((tp={cfg.parallel.tp} x pp={cfg.parallel.pp} + "
                          f"{cfg.speculative.extra_gpus} draft) x dp={cfg.parallel.dp}) but topology {t.kind} has {have}")
    if t.nccl_hops == "links":
        g.graph["nccl_hops"] = "links"  # Fabric gives nccl_model this graph's hop latencies
    n = cfg.network
    if n.latency_scale != 1.0 or n.bandwidth_scale != 1.0:
        g = topologies.scaled(g, latency_scale=n.latency_scale, bandwidth_scale=n.bandwidth_scale)
    return g


@dataclass
class ReplicaPlan:
    predictor: StepTimePredictor
    stage_gpus: list[list[str]]
    capacity: KVCapacity
    speculative: SpeculativeDecoder
    group: int = 0


@dataclass
class ClusterPlan:
    graph: nx.DiGraph
    fabric: Fabric
    replicas: list[ReplicaPlan]

    gpus: int = 0


def fleet_graph(groups: list[RunConfig]) -> tuple[nx.DiGraph, list[list[str]]]:
    """One graph holding every group's own topology side by side (data-parallel replicas
    never talk, so groups meet only at a frontend switch), and each group's GPU names in
    placement order.

    Group ``k``'s GPUs are renumbered after the previous groups' servers so that every GPU
    keeps the ``gpu<server * gpus_per_node + local_rank>`` naming; its other nodes get a
    ``fleet<k>/`` prefix."""
    if len(groups) == 1:
        g = build_graph(groups[0])
        return g, [list(topologies.PathTable(g).gpus)]
    union = nx.DiGraph(name="fleet")
    names: list[list[str]] = []
    server_offset = 0
    for k, cfg in enumerate(groups):
        g = build_graph(cfg)
        per_node = int(g.graph.get("gpus_per_node", cfg.topology.gpus_per_node))
        require(per_node == cfg.topology.gpus_per_node,
                f"fleet[{k}]: its topology has {per_node} GPUs per node but topology.gpus_per_node="
                f"{cfg.topology.gpus_per_node}; fleets need one node size")
        order = list(topologies.PathTable(g).gpus)
        mapping = {}
        for node, data in g.nodes(data=True):
            if data.get("kind") == "gpu":
                mapping[node] = topologies.gpu_name(topologies.gpu_index(node) + server_offset * per_node)
            else:
                mapping[node] = f"fleet{k}/{node}"
        g = nx.relabel_nodes(g, mapping)
        for node, data in g.nodes(data=True):
            if data.get("kind") == "gpu":
                data["server"] = data["server"] + server_offset
        servers = {d["server"] for _, d in g.nodes(data=True) if d.get("kind") == "gpu"}
        server_offset = max(servers) + 1
        union = nx.union(union, g)
        names.append([mapping[n] for n in order])
    # the groups meet only at the data-centre frontend (100 GbE, ~50 us per hop): every GPU
    # reaches every GPU as the topology contract asks, and no collective ever crosses it
    union.add_node("fleet/frontend", kind="ib_switch")
    for gpus in names:
        union.add_edge(gpus[0], "fleet/frontend", latency_us=50.0, bandwidth_GBps=12.5, link="ethernet")
        union.add_edge("fleet/frontend", gpus[0], latency_us=50.0, bandwidth_GBps=12.5, link="ethernet")
    union.graph.update(gpus_per_node=groups[0].topology.gpus_per_node)
    return union, names


def build_cluster(cfg: RunConfig) -> ClusterPlan:
    groups = cfg.groups()
    graph, group_gpus = fleet_graph(groups)
    fabric = Fabric(graph, cfg.engine, oneshot_capable=any(g.hardware.scaleup_link != "pcie" for g in groups),
                    software_latency_scale=cfg.network.latency_scale)
    replicas = []
    for k, (gcfg, gpus) in enumerate(zip(groups, group_gpus)):
        for i, stage_gpus in enumerate(placement(gcfg, gpus)):
            predictor = make_predictor(gcfg, fabric, stage_gpus)
            spec = make_speculative(gcfg, fabric, predictor, stage_gpus, draft_gpus(gcfg, gpus, i))
            shared = spec.draft if gcfg.speculative.placement == "same" and spec.draft is not None else None
            cap = kv_capacity(predictor, gcfg.hardware, gcfg.engine, gcfg.model.name, gcfg.scheduler.block_size, shared)
            replicas.append(ReplicaPlan(predictor, stage_gpus, cap, spec, k))
    return ClusterPlan(graph, fabric, replicas, cfg.gpus)


def make_speculative(cfg: RunConfig, fabric: Fabric, target: StepTimePredictor, stage_gpus: list[list[str]],
                     own_gpus: list[str]) -> SpeculativeDecoder:
    """The replica's draft predictor and gamma policy (no draft when speculation is off)."""
    s = cfg.speculative
    if s.method == "none":
        return SpeculativeDecoder(s, target, None)
    if s.method == "self":
        # EAGLE/MTP-like draft head: ``draft_layers`` decoder layers of the target's shape plus
        # the LM head, sharded like the target on its GPUs.
        head = replace(cfg.model, name=f"{cfg.model.name}_draft_head", num_hidden_layers=s.draft_layers)
        draft = StepTimePredictor(head, cfg.hardware, cfg.engine, cfg.precision, target.tp, 1, target.comm[0])
        return SpeculativeDecoder(s, target, draft)
    draft_model = load_model(s.draft_model)  # type: ignore[arg-type]
    if s.placement == "same":
        # On the first ``draft_tp`` GPUs of the target's first stage (fewer if its shape or the
        # target's group does not allow that many); draft_tp=1 avoids all draft collectives.
        tp = max(t for t in range(1, min(s.draft_tp or target.tp, target.tp) + 1)
                 if target.tp % t == 0 and shardable(draft_model, t))
        group = stage_gpus[0][:tp]
        draft = StepTimePredictor(draft_model, cfg.hardware, cfg.engine, cfg.precision, tp, 1,
                                  {"tp": fabric.group(group)} if tp > 1 else None)
        return SpeculativeDecoder(s, target, draft)
    comm = {"tp": fabric.group(own_gpus)} if len(own_gpus) > 1 else None
    draft = StepTimePredictor(draft_model, cfg.hardware, cfg.engine, cfg.precision, s.draft_tp or 1, 1, comm)
    handoff = fabric.send_s(stage_gpus[0][0], own_gpus[0], 64.0)
    return SpeculativeDecoder(s, target, draft, handoff)


def make_predictor(cfg: RunConfig, fabric: Fabric, stage_gpus: list[list[str]]) -> StepTimePredictor:
    comm = [{tag: fabric.group(gs[0]) for tag, gs in tp_groups(g, cfg.parallel.tp_cols).items()}
            for g in stage_gpus]

    def pp_send_s(stage: int, nbytes: float) -> float:
        return fabric.send_s(stage_gpus[stage][0], stage_gpus[stage + 1][0], nbytes)

    return StepTimePredictor(cfg.model, cfg.hardware, cfg.engine, cfg.precision, cfg.parallel.tp,
                             cfg.parallel.pp, comm, pp_send_s, tp_cols=cfg.parallel.tp_cols)


def load_workload(cfg: RunConfig) -> workloads.RequestTable:
    """The request table the run replays (trace or synthetic), after rate scaling and truncation."""
    w = cfg.workload
    try:
        if w.path:
            table = workloads.read_trace(w.path, w.format)
        elif w.source == "bundled":
            table = workloads.load_bundled(w.trace)
        elif w.source == "synthetic":
            n = w.max_requests or 1000
            rng = np.random.default_rng(w.seed)
            table = workloads.synthetic_requests(rng, arrival=w.arrival, rate_per_s=w.rate_per_s, n=n,
                                                 prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
                                                 cv=w.cv)
        else:
            raise ConfigError("workload.source=file needs workload.path=FILE")
        if w.max_requests is not None and w.max_requests < len(table):
            table = table.take(w.max_requests)
        if w.resample:
            table = table.resampled(np.random.default_rng(w.seed))
        if w.rate_scale != 1.0:
            table = table.scaled_rate(w.rate_scale)
    except workloads.WorkloadError as exc:
        raise ConfigError(str(exc)) from None
    return table


def make_network(fidelity: str, env: simpy.Environment, fabric: Fabric):
    """The network implementation for ``network.fidelity``."""
    impls = {"collective": CollectiveNetwork, "message": MessageNetwork}
    return impls[fidelity](env, fabric)


@dataclass(frozen=True)
class StepModel:
    """One replica's cost models built from a composed config (no SimPy)."""

    cfg: RunConfig
    fabric: Fabric
    stage_gpus: list[list[str]]
    predictor: StepTimePredictor
    spec: SpeculativeDecoder
    capacity: KVCapacity


def build_step_model(cfg_map: dict[str, Any]) -> StepModel:
    """Replica 0's step predictor, speculative decoder and KV capacity (error if it does not fit)."""
    cfg = parse_config(cfg_map)
    fabric = Fabric(build_graph(cfg), cfg.engine, oneshot_capable=cfg.hardware.scaleup_link != "pcie",
                    software_latency_scale=cfg.network.latency_scale)
    gpus = list(fabric.gpus)
    stage_gpus = placement(cfg, gpus)[0]
    predictor = make_predictor(cfg, fabric, stage_gpus)
    spec = make_speculative(cfg, fabric, predictor, stage_gpus, draft_gpus(cfg, gpus, 0))
    shared = spec.draft if cfg.speculative.placement == "same" else None
    capacity = kv_capacity(predictor, cfg.hardware, cfg.engine, cfg.model.name, cfg.scheduler.block_size, shared)
    return StepModel(cfg, fabric, stage_gpus, predictor, spec, capacity)
