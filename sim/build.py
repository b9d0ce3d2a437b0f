"""Composition root: the only code that turns a validated :class:`~sim.config.schema.RunConfig`
into wired objects.

desmod's build-wire-run lifecycle: :func:`build_cluster` makes the cost side (the topology
graph, the one :class:`~sim.cost.fabric.Fabric` over it, each replica's step predictor,
speculative decoder and KV capacity); :func:`build_simulation` makes the SimPy side on top
(environment, network of the configured fidelity, request store, router, batchers, replicas,
recorder) and hands it to :func:`sim.des.simulation.simulate`, which reads no configuration.
Tools get their cost models from the same functions (:func:`build_step_model`,
:func:`analytic_model`, :func:`make_fabric`), so a parameter such as ``network.latency_scale``
reaches every consumer by one path: :func:`make_fabric`. Registries are plain dicts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import networkx as nx
import numpy as np

import topologies
import workloads
from sim.config.parse import load_model, parse_config
from sim.config.schema import RunConfig
from sim.cost.analytic import AnalyticModel, Split
from sim.cost.fabric import Fabric
from sim.cost.memory import KVCapacity, kv_capacity, swap_time_s
from sim.cost.placement import draft_gpus, placement, shardable, tp_groups
from sim.cost.spinup import spinup_s
from sim.des.autoscale import Autoscaler, ReplicaLog
from sim.des.faults import FaultInjector
from sim.cost.step_time import StepTimePredictor
from sim.des.disagg import KVHandoff
from sim.des.invariants import InvariantChecker
from sim.des.replica import Replica
from sim.des.simulation import Admission, Arrivals, Cluster, SimEnvironment
from sim.errors import ConfigError, require
from sim.network.collective import CollectiveNetwork
from sim.network.interface import Network
from sim.network.message import MessageNetwork
from sim.observe import schemas
from sim.observe.progress import Progress
from sim.observe.recorder import ColumnRecorder
from sim.observe.tables import RequestLog
from sim.observe.timeline import Timeline
from sim.policy.batching import ContinuousBatcher, SchedulerConfig
from sim.policy.autoscale import Scaler
from sim.policy.faults import FaultDraws, availability, fault_sources, replica_failure_rate_per_s
from sim.policy.kv_cache import KVBlockPool
from sim.policy.requests import RequestStore
from sim.policy.routing import Router
from sim.policy.speculative import SpeculativeDecoder, request_acceptance, sample_accepted
from sim.spec.batch import BatchShape

if TYPE_CHECKING:
    import simpy

# ------------------------------------------------------------------------------- topology


def _scaleup_link(cfg: RunConfig) -> tuple[float, float]:
    """(latency_us, bandwidth_GBps) of the GPU's scale-up link: ``topology.link_*`` (fitted
    topologies) over the hardware preset's."""
    t, hw = cfg.topology, cfg.hardware
    return (t.link_latency_us if t.link_latency_us is not None else hw.scaleup_latency_us,
            t.link_bandwidth_GBps if t.link_bandwidth_GBps is not None else hw.scaleup_bandwidth_GBps)


def _nvlink_kind(cfg: RunConfig) -> str:
    hw = cfg.hardware
    require(hw.scaleup_link != "pcie", f"hardware {hw.name} has no NVLink/NVSwitch; use topology=pcie_box")
    return "infinity_fabric" if hw.scaleup_link == "infinity_fabric" else "nvlink"


def _hgx(cfg: RunConfig) -> dict[str, Any]:
    t, need = cfg.topology, cfg.gpus
    require(need <= t.gpus_per_node, f"parallel needs {need} GPUs (tp*pp*dp) but topology=hgx has {t.gpus_per_node}; "
                                     f"use topology=multi_node_ib for more than one node")
    link = _nvlink_kind(cfg)
    lat, bw = _scaleup_link(cfg)
    return dict(gpus=t.gpus_per_node, nvlink_bandwidth_GBps=bw, nvlink_latency_us=lat, link=link)


def _nvl72(cfg: RunConfig) -> dict[str, Any]:
    lat, bw = _scaleup_link(cfg)
    return dict(gpus=72, nvlink_bandwidth_GBps=bw, nvlink_latency_us=lat)


def _multi_node_ib(cfg: RunConfig) -> dict[str, Any]:
    t, hw = cfg.topology, cfg.hardware
    link = _nvlink_kind(cfg)
    lat, bw = _scaleup_link(cfg)
    nodes = -(-cfg.gpus // t.gpus_per_node) if t.nodes == "auto" else int(t.nodes)
    return dict(nodes=nodes, gpus_per_node=t.gpus_per_node, nvlink_bandwidth_GBps=bw, nvlink_latency_us=lat,
                ib_bandwidth_GBps=t.ib_bandwidth_GBps, ib_latency_us=t.ib_latency_us,
                pcie_bandwidth_GBps=hw.pcie_bandwidth_GBps, pcie_latency_us=1.0,
                rail_optimized=t.rail_optimized, link=link)


def _pcie_box(cfg: RunConfig) -> dict[str, Any]:
    """PCIe cards talk over the scale-up link of their preset; NVLink GPUs put in a PCIe box
    over their host PCIe link (1 us per switch hop)."""
    t, hw = cfg.topology, cfg.hardware
    on_pcie = hw.scaleup_link == "pcie"
    bw = hw.scaleup_bandwidth_GBps if on_pcie else hw.pcie_bandwidth_GBps
    lat = hw.scaleup_latency_us if on_pcie else 1.0
    return dict(gpus=max(cfg.gpus, t.gpus_per_node),
                pcie_bandwidth_GBps=t.link_bandwidth_GBps if t.link_bandwidth_GBps is not None else bw,
                pcie_latency_us=t.link_latency_us if t.link_latency_us is not None else lat,
                gpus_per_switch=t.gpus_per_switch)


def _file(cfg: RunConfig) -> dict[str, Any]:
    return dict(path=cfg.topology.path)


#: topology.kind -> the builder parameters it takes from the config (builders:
#: :data:`topologies.BUILDERS`).
TOPOLOGY_PARAMS: dict[str, Callable[[RunConfig], dict[str, Any]]] = {
    "hgx": _hgx, "nvl72": _nvl72, "multi_node_ib": _multi_node_ib, "pcie_box": _pcie_box, "file": _file,
}


def build_graph(cfg: RunConfig) -> nx.DiGraph:
    """The topology graph with link parameters from the hardware preset, at their datasheet
    values (``network.*_scale`` is applied by :func:`make_fabric`, nowhere else)."""
    t = cfg.topology
    try:
        g = topologies.build_topology(t.kind, **TOPOLOGY_PARAMS[t.kind](cfg))
    except topologies.TopologyError as exc:
        raise ConfigError(f"topology: {exc}") from None
    have = topologies.gpu_count(g)
    require(cfg.gpus <= have, f"parallel needs {cfg.gpus} GPUs ((tp={cfg.parallel.tp} x pp={cfg.parallel.pp} + "
                              f"{cfg.speculative.extra_gpus} draft) x dp={cfg.parallel.dp}) but topology {t.kind} "
                              f"has {have}")
    if t.nccl_hops == "links":
        g.graph["nccl_hops"] = "links"  # Fabric gives nccl_model this graph's hop latencies
    return g


def make_fabric(cfg: RunConfig, graph: nx.DiGraph | None = None, oneshot_capable: bool | None = None) -> Fabric:
    """The routes and collective cost models over ``graph`` (default: :func:`build_graph`),
    with ``network.latency_scale`` and ``network.bandwidth_scale`` applied."""
    return Fabric(build_graph(cfg) if graph is None else graph, cfg.engine,
                  oneshot_capable=cfg.hardware.scaleup_link != "pcie" if oneshot_capable is None else oneshot_capable,
                  latency_scale=cfg.network.latency_scale, bandwidth_scale=cfg.network.bandwidth_scale)




def _boxes(cfg: RunConfig, k: int) -> list[tuple[RunConfig, int]]:
    """A mixed fleet's group as the servers it occupies, each with the GPUs its replicas use: one,
    except PCIe cards beyond one box (``topology.gpus_per_node``), which fill as many boxes as
    they need with whole replicas (a homogeneous PCIe run keeps its one box of any size)."""
    t = cfg.topology
    if t.kind != "pcie_box" or cfg.gpus <= t.gpus_per_node:
        return [(cfg, cfg.gpus)]
    per_replica = cfg.gpus_per_replica
    require(per_replica <= t.gpus_per_node,
            f"fleet[{k}]: a replica of {per_replica} GPUs does not fit a {t.gpus_per_node}-GPU PCIe box "
            f"(topology.gpus_per_node)")
    per_box = t.gpus_per_node // per_replica
    out, left = [], cfg.parallel.dp
    while left:
        n = min(per_box, left)
        out.append((replace(cfg, parallel=replace(cfg.parallel, dp=n)), n * per_replica))
        left -= n
    return out


def fleet_graph(groups: list[RunConfig], ib_joined: bool = False) -> tuple[nx.DiGraph, list[list[str]]]:
    """One graph holding every group's own topology side by side, and each group's GPU names
    in placement order. Data-parallel replicas never talk, so a mixed fleet's groups meet
    only at a frontend switch; disaggregated pools (``ib_joined``: every group on
    ``multi_node_ib`` nodes) share their InfiniBand switches, one fabric as for one cluster's
    nodes: a prefill GPU reaches the decode GPU of its local rank through its NIC, their rail
    leaf and that GPU's NIC (other ranks also through the spine, whose uplinks carry every
    node's bandwidth).

    Group ``k``'s GPUs are renumbered after the previous groups' servers so that every GPU
    keeps the ``gpu<server * gpus_per_node + local_rank>`` naming; its other nodes get a
    ``fleet<k>/`` prefix (the shared tier: ``pools/``)."""
    if len(groups) == 1 and not ib_joined:
        g = build_graph(groups[0])
        return g, [list(topologies.PathTable(g).gpus)]
    union = nx.DiGraph(name="pools" if ib_joined else "fleet")
    union_bw: dict[tuple[str, str], float] = {}
    names: list[list[str]] = []
    entries: list[str] = []          # one GPU of every box or node group, joined to the frontend
    server_offset = 0
    for k, group in enumerate(groups):
        names.append([])
        for b, (cfg, used) in enumerate(_boxes(group, k) if not ib_joined else [(group, group.gpus)]):
            g = build_graph(cfg)
            per_node = int(g.graph.get("gpus_per_node", cfg.topology.gpus_per_node))
            require(per_node == cfg.topology.gpus_per_node,
                    f"fleet[{k}]: its topology has {per_node} GPUs per node but topology.gpus_per_node="
                    f"{cfg.topology.gpus_per_node}; fleets need one node size")
            order = list(topologies.PathTable(g).gpus)[:used]
            prefix = f"fleet{k}/" if b == 0 else f"fleet{k}box{b}/"
            mapping = {}
            for node, data in g.nodes(data=True):
                if data.get("kind") == "gpu":
                    mapping[node] = topologies.gpu_name(topologies.gpu_index(node) + server_offset * per_node)
                elif ib_joined and data.get("kind") == "ib_switch":
                    mapping[node] = f"pools/{node}"
                else:
                    mapping[node] = prefix + node
            g = nx.relabel_nodes(g, mapping)
            for node, data in g.nodes(data=True):
                if data.get("kind") == "gpu":
                    data["server"] = data["server"] + server_offset
            servers = {d["server"] for _, d in g.nodes(data=True) if d.get("kind") == "gpu"}
            server_offset = max(servers) + 1
            if ib_joined:
                # switch-to-switch uplinks carry the downlinks of every pool's nodes
                shared = [(u, v, d["bandwidth_GBps"]) for u, v, d in g.edges(data=True)
                          if u.startswith("pools/") and v.startswith("pools/") and union.has_edge(u, v)]
                union = nx.compose(union, g)
                for u, v, bw in shared:
                    union.edges[u, v]["bandwidth_GBps"] = bw + union_bw[(u, v)]
                union_bw = {(u, v): d["bandwidth_GBps"] for u, v, d in union.edges(data=True)}
            else:
                union = nx.union(union, g)
            names[-1] += [mapping[n] for n in order]
            entries.append(mapping[order[0]])
    if ib_joined:
        union.graph.update(gpus_per_node=groups[0].topology.gpus_per_node)
        return union, names
    # the groups meet only at the data-centre frontend (100 GbE, ~50 us per hop): every GPU
    # reaches every GPU as the topology contract asks, and no collective ever crosses it
    union.add_node("fleet/frontend", kind="ib_switch")
    for gpu in entries:
        union.add_edge(gpu, "fleet/frontend", latency_us=50.0, bandwidth_GBps=12.5, link="ethernet")
        union.add_edge("fleet/frontend", gpu, latency_us=50.0, bandwidth_GBps=12.5, link="ethernet")
    union.graph.update(gpus_per_node=groups[0].topology.gpus_per_node)
    return union, names


# ------------------------------------------------------------------------------- cost models


@dataclass
class ReplicaPlan:
    """One replica's cost models: its step predictor, speculative decoder, KV capacity, GPUs."""

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


def make_predictor(cfg: RunConfig, fabric: Fabric, stage_gpus: list[list[str]]) -> StepTimePredictor:
    comm = [{tag: fabric.group(gs[0]) for tag, gs in tp_groups(g, cfg.parallel.tp_cols).items()}
            for g in stage_gpus]

    def pp_send_s(stage: int, nbytes: float) -> float:
        return fabric.send_s(stage_gpus[stage][0], stage_gpus[stage + 1][0], nbytes)

    return StepTimePredictor(cfg.model, cfg.hardware, cfg.engine, cfg.precision, cfg.parallel.tp,
                             cfg.parallel.pp, comm, pp_send_s, tp_cols=cfg.parallel.tp_cols, ep=cfg.parallel.ep,
                             ep_skew=cfg.parallel.ep_skew, ep_attention=cfg.parallel.ep_attention)


def predictor_key(fabric: Fabric, stage_gpus: list[list[str]], tp_cols: int, group: int) -> tuple:
    """What a replica's step costs depend on besides its group's config: each stage's
    collective cost models (shared by route shape, :meth:`Fabric.group`) and the latencies and
    bandwidths of the routes between consecutive stages."""
    comm = tuple(tuple((tag, id(fabric.group(gs[0]))) for tag, gs in tp_groups(g, tp_cols).items())
                 for g in stage_gpus)
    sends = tuple(tuple((lat, bw) for _, lat, bw in fabric.pair(a[0], b[0]).hops)
                  for a, b in zip(stage_gpus, stage_gpus[1:]))
    return group, comm, sends


def make_speculative(cfg: RunConfig, fabric: Fabric, target: StepTimePredictor, stage_gpus: list[list[str]],
                     own_gpus: list[str]) -> SpeculativeDecoder:
    """The replica's draft predictor and gamma policy (no draft when speculation is off)."""
    s = cfg.speculative
    if s.method == "none":
        return SpeculativeDecoder(s, target, None)
    # a draft forward runs inside the step: the host's per-step, per-worker and per-sequence
    # time is the step's (charged once, by the target), not each draft forward's
    engine = replace(cfg.engine, step_overhead_us=0.0, step_overhead_us_per_sequence=0.0,
                     step_overhead_us_per_tp_rank=0.0)
    if s.method == "self":
        # EAGLE/MTP-like draft head: ``draft_layers`` decoder layers of the target's shape plus
        # the LM head, sharded like the target on its GPUs.
        head = replace(cfg.model, name=f"{cfg.model.name}_draft_head", num_hidden_layers=s.draft_layers,
                       first_k_dense_replace=min(cfg.model.first_k_dense_replace, s.draft_layers))
        draft = StepTimePredictor(head, cfg.hardware, engine, cfg.precision, target.tp, 1, target.comm[0])
        return SpeculativeDecoder(s, target, draft)
    draft_model = load_model(s.draft_model)  # type: ignore[arg-type]
    if s.placement == "same":
        # On the first ``draft_tp`` GPUs of the target's first stage (fewer if its shape or the
        # target's group does not allow that many); draft_tp=1 avoids all draft collectives.
        tp = max(t for t in range(1, min(s.draft_tp or target.tp, target.tp) + 1)
                 if target.tp % t == 0 and shardable(draft_model, t))
        group = stage_gpus[0][:tp]
        draft = StepTimePredictor(draft_model, cfg.hardware, engine, cfg.precision, tp, 1,
                                  {"tp": fabric.group(group)} if tp > 1 else None)
        return SpeculativeDecoder(s, target, draft)
    comm = {"tp": fabric.group(own_gpus)} if len(own_gpus) > 1 else None
    draft = StepTimePredictor(draft_model, cfg.hardware, engine, cfg.precision, s.draft_tp or 1, 1, comm)
    handoff = fabric.send_s(stage_gpus[0][0], own_gpus[0], 64.0)
    return SpeculativeDecoder(s, target, draft, handoff)


def replica_plan(cfg: RunConfig, fabric: Fabric, gpus: list[str], index: int, group: int = 0,
                 shared: dict[tuple, StepTimePredictor] | None = None) -> ReplicaPlan:
    """Replica ``index`` of a homogeneous group on ``gpus``: predictor, speculation, KV capacity
    (a ConfigError if the weights do not fit).

    Replicas of one group whose collectives and stage-to-stage routes cost the same share one
    predictor through ``shared`` (and so its caches: memory does not grow with replicas)."""
    stage_gpus = placement(cfg, gpus)[index]
    key = predictor_key(fabric, stage_gpus, cfg.parallel.tp_cols, group)
    predictor = None if shared is None else shared.get(key)
    if predictor is None:
        predictor = make_predictor(cfg, fabric, stage_gpus)
        if shared is not None:
            shared[key] = predictor
    spec = make_speculative(cfg, fabric, predictor, stage_gpus, draft_gpus(cfg, gpus, index))
    shared = spec.draft if cfg.speculative.placement == "same" else None
    cap = kv_capacity(predictor, cfg.hardware, cfg.engine, cfg.model.name, cfg.scheduler.block_size, shared)
    return ReplicaPlan(predictor, stage_gpus, cap, spec, group)


def build_cluster(cfg: RunConfig) -> ClusterPlan:
    """Every replica's cost models over one fabric (a mixed fleet: each group on its topology)."""
    groups = cfg.groups()
    graph, group_gpus = fleet_graph(groups, ib_joined=cfg.disagg.enabled)
    fabric = make_fabric(cfg, graph, oneshot_capable=any(g.hardware.scaleup_link != "pcie" for g in groups))
    shared: dict[tuple, StepTimePredictor] = {}
    replicas = [replica_plan(gcfg, fabric, gpus, i, k, shared)
                for k, (gcfg, gpus) in enumerate(zip(groups, group_gpus)) for i in range(gcfg.parallel.dp)]
    return ClusterPlan(graph, fabric, replicas, cfg.gpus)


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
    fabric = make_fabric(cfg)
    rp = replica_plan(cfg, fabric, list(fabric.gpus), 0)
    return StepModel(cfg, fabric, rp.stage_gpus, rp.predictor, rp.speculative, rp.capacity)


class SplitModels:
    """Cost models of one replica of ``cfg`` under any parallel split (for the analytic model).

    Multi-node splits share one fabric of ``max_gpus`` GPUs (a deployment uses its first GPUs,
    and routes between them do not depend on how many more nodes hang off the same rails)."""

    def __init__(self, cfg: RunConfig, max_gpus: int | None = None) -> None:
        self.cfg, self.max_gpus = cfg, max_gpus
        self._fabrics: dict[tuple, Fabric] = {}

    def deployment(self, split: Split) -> RunConfig:
        cfg = self.cfg
        topo = cfg.topology
        if topo.kind == "hgx" and split.gpus + cfg.speculative.extra_gpus > topo.gpus_per_node:
            topo = replace(topo, kind="multi_node_ib", nodes="auto")
        return replace(cfg, parallel=replace(cfg.parallel, tp=split.tp, pp=split.pp, dp=1, tp_cols=split.tp_cols,
                                             ep=split.tp if cfg.parallel.ep > 1 else 1),
                       topology=topo)

    def fabric(self, split: Split) -> tuple[RunConfig, Fabric]:
        cfg = self.deployment(split)
        need = split.gpus + cfg.speculative.extra_gpus
        gpus = max(need, self.max_gpus or 0) if cfg.topology.kind == "multi_node_ib" else need
        key = (cfg.topology.kind, -(-gpus // cfg.topology.gpus_per_node))
        fabric = self._fabrics.get(key)
        if fabric is None:
            graph_cfg = replace(cfg, parallel=replace(cfg.parallel, tp=gpus, pp=1, tp_cols=1),
                                speculative=replace(cfg.speculative, method="none"))
            fabric = make_fabric(cfg, build_graph(graph_cfg))
            self._fabrics[key] = fabric
        return cfg, fabric

    def predictor(self, split: Split) -> StepTimePredictor:
        cfg, fabric = self.fabric(split)
        return make_predictor(cfg, fabric, placement(cfg, list(fabric.gpus))[0])

    def speculative(self, split: Split) -> SpeculativeDecoder:
        cfg, fabric = self.fabric(split)
        gpus = list(fabric.gpus)
        stages = placement(cfg, gpus)[0]
        return make_speculative(cfg, fabric, make_predictor(cfg, fabric, stages), stages, draft_gpus(cfg, gpus, 0))


def analytic_model(cfg: RunConfig, max_gpus: int | None = None) -> AnalyticModel:
    """The closed-form model of ``cfg`` over parallel splits, on this builder's cost models."""
    models = SplitModels(cfg, max_gpus)
    return AnalyticModel(cfg, models.speculative, models.predictor)


# ------------------------------------------------------------------------------- workload


#: The run's independent random streams, each derived from the root ``seed`` by its own key
#: (numpy ``SeedSequence``): changing how one stream is used never moves another's draws.
RANDOM_STREAMS: dict[str, tuple[int, ...]] = {
    "workload": (),             # synthetic arrivals and lengths (the seed alone, as numpy.random.default_rng(seed))
    "resample": (0x7e5a,),      # bootstrap of a trace's request lengths (workload.resample)
    "speculative": (0x5bec,),   # per-request acceptance rates and accepted drafts
    "faults": (0xfa17,),        # failure and straggler times and components (faults=mtbf)
}


def random_stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name`` (one of :data:`RANDOM_STREAMS`) for root ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, *RANDOM_STREAMS[name]]) if RANDOM_STREAMS[name]
                                 else np.random.SeedSequence(seed))


def load_workload(cfg: RunConfig) -> workloads.RequestTable:
    """The request table the run replays (trace or synthetic): truncated, resampled, tiled
    (``repeat``), rate-scaled, then warped by the rate profile, in that order."""
    w = cfg.workload
    try:
        if w.path:
            table = workloads.read_trace(w.path, w.format)
        elif w.source == "bundled":
            table = workloads.load_bundled(w.trace)
        elif w.source == "synthetic":
            n = w.max_requests or 1000
            rng = random_stream(cfg.seed, "workload")
            table = workloads.synthetic_requests(rng, arrival=w.arrival, rate_per_s=w.rate_per_s, n=n,
                                                 prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
                                                 cv=w.cv)
        else:
            raise ConfigError("workload.source=file needs workload.path=FILE")
        if w.max_requests is not None and w.max_requests < len(table):
            table = table.take(w.max_requests)
        if w.resample:
            table = table.resampled(random_stream(cfg.seed, "resample"))
        if w.repeat != 1:
            table = table.tiled(w.repeat)
        if w.rate_scale != 1.0:
            table = table.scaled_rate(w.rate_scale)
        if w.rate_profile is not None:
            table = workloads.apply_rate_profile(table, workloads.read_rate_profile(w.rate_profile))
    except workloads.WorkloadError as exc:
        raise ConfigError(str(exc)) from None
    return table


# ------------------------------------------------------------------------------- simulation

#: network.fidelity -> implementation of :class:`sim.network.interface.Network`.
NETWORKS: dict[str, Callable[[simpy.Environment, Fabric], Network]] = {
    "collective": CollectiveNetwork, "message": MessageNetwork,
}


def make_network(fidelity: str, env: simpy.Environment, fabric: Fabric) -> Network:
    """The network implementation for ``network.fidelity``."""
    return NETWORKS[fidelity](env, fabric)


#: Longest steady-decode span simulated as one event (bounds the arrays a span computes).
MAX_SPAN_STEPS = 4096


def prefix_unit_tokens(scheduler: SchedulerConfig, table: workloads.RequestTable) -> int | None:
    """Tokens per cached prefix unit with ``scheduler.prefix_caching`` (the trace's prefix
    block size), None without; a one-line error if the trace has no prefix ids or its blocks
    are not whole KV blocks."""
    if not scheduler.prefix_caching:
        return None
    if table.prefix_block_ids is None:
        raise ConfigError(f"scheduler.prefix_caching=true needs a trace with prefix block ids (e.g. "
                          f"workload=mooncake_synthetic, whose hash_ids name its 512-token blocks, or a plain "
                          f"trace with a prefix_group column); {table.source} has none")
    unit = table.prefix_block_tokens
    if unit % scheduler.block_size:
        raise ConfigError(f"scheduler.block_size={scheduler.block_size} must divide the trace's prefix blocks "
                          f"of {unit} tokens when scheduler.prefix_caching=true")
    return unit


def prefill_rates(replicas: Sequence[ReplicaPlan], chunk_tokens: int) -> list[float]:
    """Each replica's prompt tokens per second at a full chunk of ``chunk_tokens`` (what
    ``least_outstanding_time`` weighs its outstanding tokens by)."""
    shape = BatchShape.from_sequences([0], [chunk_tokens], [1])
    return [chunk_tokens / rp.predictor.step(shape).total_s for rp in replicas]


def build_simulation(cfg: RunConfig, plan: ClusterPlan, table: workloads.RequestTable,
                     steps_path: Path | None = None, requests_path: Path | None = None,
                     timeline_path: Path | None = None, transfers_path: Path | None = None) -> Cluster:
    """The SimPy side of a run, wired: environment, network, request store, router, batchers,
    replicas, the recorder of ``steps.parquet`` (streamed to ``steps_path`` if given), the
    log of ``requests.parquet`` (streamed to ``requests_path`` if given, else kept in memory),
    given ``timeline_path`` the timeline (``output.timeline``) and, with ``disagg=pools``, the
    hand-off between the pools (:class:`~sim.des.disagg.KVHandoff`; its ``transfers.parquet``
    streamed to ``transfers_path`` if given).

    Steady decode is fast-forwarded (``sim.fast_forward``) where a step's time depends on
    nothing but its own batch: collective fidelity, one pipeline stage, no speculation."""
    env = SimEnvironment()
    network = make_network(cfg.network.fidelity, env, plan.fabric)
    arrivals = Arrivals.of(table.arrival_s, table.prompt_tokens, table.output_tokens, table.priority)
    requests = RequestStore()
    n = len(arrivals)
    rng = random_stream(cfg.seed, "speculative")
    acceptance = request_acceptance(rng, cfg.speculative, n) if cfg.speculative.enabled else None

    rates = cfg.speculative.request_rates

    def accept(slot: int, proposed: int) -> int:
        assert acceptance is not None
        return sample_accepted(rng, rates(float(acceptance[requests.request_id[slot]])), proposed)

    disagg = cfg.disagg.enabled
    require(not (disagg and cfg.speculative.enabled),
            "disagg=pools with speculative decoding is not built: use speculative=none with disaggregated pools")
    prefill_count = cfg.disagg.prefill.replicas if disagg and cfg.disagg.prefill is not None else 0
    decoders = plan.replicas[prefill_count:]
    admission = Admission(min(rp.capacity.tokens for rp in decoders),
                          cfg.scheduler.context_limit(cfg.model.max_position_embeddings),
                          cfg.scheduler.max_tokens_per_step,
                          min(rp.capacity.tokens for rp in plan.replicas[:prefill_count]) if disagg else None)
    progress = Progress(env, float(arrivals.arrival_s[-1]) if n else 0.0, cfg.output.progress, n)
    cluster = Cluster(env, arrivals, requests, RequestLog(n, requests_path),
                      Router(cfg.parallel.router, prefill_count or len(plan.replicas),
                             prefill_rates(plan.replicas[:prefill_count or len(plan.replicas)],
                                           cfg.scheduler.max_tokens_per_step)
                             if cfg.parallel.router == "least_outstanding_time" else None),
                      ColumnRecorder(schemas.STEPS, steps_path), progress, admission, plan.gpus)
    cluster.network = network
    cluster.frontend_s = cfg.engine.request_overhead_us * 1e-6
    if disagg:
        # the decode pool is routed by what a router can count (its pool has no prefix cache)
        cluster.kv = KVHandoff(env, network, cfg.disagg.transfer, requests, cluster.router,
                               Router("least_outstanding_tokens", len(decoders)),
                               cfg.model.kv_bytes_per_token(cfg.precision.kv_bytes),
                               ColumnRecorder(schemas.TRANSFERS, transfers_path, summed=False), cluster.kv_arrived,
                               lambda slot: cluster.cached_prefix_tokens(requests.request_id[slot], requests.prompt[slot]))
    if cfg.debug.check_invariants:
        cluster.checker = InvariantChecker(env, cfg.scheduler)
        cluster.log.check = cluster.checker.on_row
        network.observe(cluster.checker)
    if timeline_path is not None:
        names = [f"replica {i} (tp={rp.predictor.tp}, pp={len(rp.stage_gpus)}, {rp.stage_gpus[0][0]}..{rp.stage_gpus[-1][-1]})"
                 for i, rp in enumerate(plan.replicas)]
        cluster.timeline = Timeline(timeline_path, cfg.output.timeline_window_s, names)
        network.observe(cluster.timeline)
    spans = (cfg.sim.fast_forward and cfg.network.fidelity == "collective" and not cfg.speculative.enabled)
    unit_tokens = prefix_unit_tokens(cfg.scheduler, table)
    groups = cfg.groups()
    require(cfg.parallel.router != "prefix_aware" or unit_tokens is not None,
            "parallel.router=prefix_aware routes by cached prefixes: it needs scheduler.prefix_caching=true")
    for i, rp in enumerate(plan.replicas):
        decodes = disagg and i >= prefill_count       # a decode pool's replica: no prefix cache, KV from the prefill pool
        pool = KVBlockPool(rp.capacity.tokens // cfg.scheduler.block_size, cfg.scheduler.block_size,
                           None if decodes else unit_tokens)
        block_bytes = rp.capacity.kv_bytes_per_token_per_gpu * cfg.scheduler.block_size
        swap = cfg.scheduler.preemption == "swap"
        host_blocks = int(cfg.scheduler.swap_space_GB * 1e9 // block_bytes) if swap else 0
        counts = (cluster.kv.decode_router.generated, i - prefill_count) if decodes and cluster.kv else (cluster.router.generated, i)
        step_s = (lambda b, predictor=rp.predictor: predictor.step(b).total_s) \
            if cfg.scheduler.step_time_budget_s is not None else None
        batcher = ContinuousBatcher(cfg.scheduler, pool, requests, table.prefix_block_ids, host_blocks, counts,
                                    hands_off=disagg and not decodes, step_s=step_s)
        hw = groups[rp.group].hardware
        swap_s = partial(swap_time_s, block_bytes_per_gpu=block_bytes, layers=max(rp.predictor.stage_layers),
                         latency_s=hw.pcie_latency_us * 1e-6, bandwidth_Bps=hw.pcie_bandwidth_GBps * 1e9) if swap else None
        single_stage = len(rp.stage_gpus) == 1
        cluster.replicas.append(Replica(env, i, rp.predictor, batcher, network, rp.stage_gpus, cluster,
                                        cfg.parallel.tp_cols, rp.speculative if cfg.speculative.enabled else None,
                                        accept, MAX_SPAN_STEPS if spans and single_stage else 1, swap_s))
    if cfg.faults.enabled or cfg.autoscale.enabled:
        cluster.lifecycle = ReplicaLog([sum(len(stage) for stage in rp.stage_gpus) for rp in plan.replicas])
    if cfg.faults.enabled:
        add_faults(cfg, plan, cluster)
    if cfg.autoscale.enabled:
        a = cfg.autoscale
        n = len(plan.replicas)
        initial = a.initial_replicas if a.initial_replicas is not None else min(n, a.min_replicas + a.headroom)
        cluster.scaler = Autoscaler(env, cluster, Scaler(a, n), a.interval_s, initial,
                                    [spinup_s(rp.capacity.weights_GB_per_gpu, cfg.spinup) for rp in plan.replicas])
    if cluster.kv is not None:
        cluster.kv.add_replicas(cluster.replicas[:prefill_count], cluster.replicas[prefill_count:],
                                [list(rp.predictor.stage_layers) for rp in plan.replicas],
                                1 if cfg.model.is_mla else cfg.model.num_key_value_heads,
                                [rp.predictor.dp_share < 1.0 for rp in plan.replicas])
    return cluster


def add_faults(cfg: RunConfig, plan: ClusterPlan, cluster: Cluster) -> None:
    """``faults=mtbf``: every component's failure rate over the fleet's replicas and servers,
    each replica's downtime after a fault (detection, repair, its spin-up), and the process
    that draws them from the run's ``faults`` random stream."""
    f = cfg.faults
    require(not cfg.disagg.enabled, "faults=mtbf with disagg=pools is not built: faults take down co-located "
                                    "replicas only; use disagg=none")
    replica_gpus = [[g for stage in rp.stage_gpus for g in stage] for rp in plan.replicas]
    server_of = {g: int(plan.graph.nodes[g]["server"]) for gpus in replica_gpus for g in gpus}
    sources = fault_sources(f, replica_gpus, server_of, [rp.predictor.tp > 1 for rp in plan.replicas])
    down = [f.detect_s + f.repair_s + spinup_s(rp.capacity.weights_GB_per_gpu, cfg.spinup) for rp in plan.replicas]
    stage_of = {g: (k, s) for k, rp in enumerate(plan.replicas) for s, stage in enumerate(rp.stage_gpus) for g in stage}
    cluster.recovery, cluster.max_restarts = f.recovery, f.max_restarts
    if f.degraded_link_mtbf_hours is not None:
        require(cfg.network.fidelity == "collective",
                "faults.degraded_link_mtbf_hours needs network.fidelity=collective (a degraded link reprices the "
                "collectives; message fidelity simulates each message over the fabric's healthy links)")
        slow = make_fabric(replace(cfg, network=replace(cfg.network, latency_scale=cfg.network.latency_scale
                                                        * f.degraded_link_latency_factor)),
                           plan.graph, oneshot_capable=plan.fabric.oneshot_capable)
        groups, shared = cfg.groups(), {}
        for replica, rp in zip(cluster.replicas, plan.replicas):
            key = predictor_key(slow, rp.stage_gpus, groups[rp.group].parallel.tp_cols, rp.group)
            if key not in shared:
                shared[key] = make_predictor(groups[rp.group], slow, rp.stage_gpus)
            replica.degraded_predictor = shared[key]
    injector = FaultInjector(cluster.env, cluster, FaultDraws(sources, random_stream(cfg.seed, "faults")), down,
                             stage_of, f.straggler_slowdown, f.straggler_duration_s, f.degraded_link_duration_s)
    weights = [len(g) for g in replica_gpus]
    injector.log.expected_availability = sum(
        w * availability(replica_failure_rate_per_s(sources, k), down[k]) for k, w in enumerate(weights)) / sum(weights)
    cluster.faults = injector
