"""Schemas of the run configuration: frozen dataclasses whose ``__post_init__`` checks values.

:func:`sim.config.parse.parse_config` builds them from Hydra's composed mapping. Plain
dataclass validation is used instead of OmegaConf structured configs so that every error
reads as one sentence a user can act on (field, value, what is allowed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from sim.cost.money import CostConfig
from sim.cost.spinup import SpinupConfig
from sim.errors import require
from sim.policy.autoscale import AutoscaleConfig
from sim.policy.batching import SchedulerConfig
from sim.policy.faults import FaultConfig
from sim.policy.routing import ROUTERS
from sim.policy.speculative import SpeculativeConfig
from sim.spec.engine import EngineProfile
from sim.spec.hardware import HardwareSpec
from sim.spec.model import ModelSpec
from sim.spec.precision import Precision


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 8
    pp: int = 1
    dp: int = 1
    tp_cols: int = 1
    router: str = "least_outstanding_tokens"
    ep: int = 1                 # expert parallelism over the tp GPUs of a stage (1: experts tensor-parallel)
    ep_skew: float = 0.0        # Zipf exponent of expert popularity under expert parallelism (0: uniform)
    ep_attention: str = "dp"    # attention under expert parallelism: dp (data-parallel, all-to-alls) | tp

    def __post_init__(self) -> None:
        require(isinstance(self.ep, int) and not isinstance(self.ep, bool) and self.ep >= 1
                and (self.ep == 1 or self.ep == self.tp),
                f"parallel.ep={self.ep!r} must be 1 or equal parallel.tp={self.tp} (the routed experts spread over "
                f"the stage's GPUs)")
        require(isinstance(self.ep_skew, (int, float)) and not isinstance(self.ep_skew, bool) and 0 <= self.ep_skew <= 4,
                f"parallel.ep_skew={self.ep_skew!r} must be a number between 0 (uniform) and 4")
        require(self.ep_attention in ("dp", "tp"),
                f"parallel.ep_attention={self.ep_attention!r} is not one of ['dp', 'tp']")
        require(self.ep == 1 or self.tp_cols == 1, f"parallel.ep={self.ep} with parallel.tp_cols={self.tp_cols}: "
                                                   f"2-D tensor parallelism and expert parallelism do not combine")
        for f in ("tp", "pp", "dp"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"parallel.{f}={v!r} must be an integer >= 1")
        require(isinstance(self.tp_cols, int) and self.tp_cols >= 1 and self.tp % self.tp_cols == 0,
                f"parallel.tp_cols={self.tp_cols!r} must be an integer >= 1 dividing parallel.tp={self.tp}")
        require(self.router in ROUTERS, f"parallel.router={self.router!r} is not one of {list(ROUTERS)}")

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass(frozen=True)
class NetworkConfig:
    fidelity: str = "collective"
    latency_scale: float = 1.0
    bandwidth_scale: float = 1.0

    def __post_init__(self) -> None:
        require(self.fidelity in ("collective", "message"),
                f"network.fidelity={self.fidelity!r} is not one of ['collective', 'message']")
        for f in ("latency_scale", "bandwidth_scale"):
            v = getattr(self, f)
            require(isinstance(v, (int, float)) and v > 0, f"network.{f}={v!r} must be a number > 0")


@dataclass(frozen=True)
class TopologyConfig:
    kind: str = "hgx"
    nodes: int | str = "auto"
    gpus_per_node: int = 8
    ib_bandwidth_GBps: float = 50.0
    ib_latency_us: float = 5.0
    rail_optimized: bool = True
    gpus_per_switch: int = 4
    path: str | None = None
    # Link overrides (e.g. fitted by ``python -m sim.calibrate format=nccl-tests``); null keeps
    # the hardware preset's scale-up link: GPU-to-GPU latency through one switch (NVSwitch or
    # PCIe switch/root port) and per-direction bandwidth of the GPU's scale-up link.
    link_latency_us: float | None = None
    link_bandwidth_GBps: float | None = None
    # Per-hop latencies of engine.allreduce_algorithm=nccl_model: NCCL's LL constants
    # ("constants") or this topology's own link latencies ("links", for fitted topologies).
    nccl_hops: str = "constants"

    def __post_init__(self) -> None:
        kinds = ("hgx", "multi_node_ib", "pcie_box", "nvl72", "file")
        require(self.kind in kinds, f"topology.kind={self.kind!r} is not one of {list(kinds)}")
        for f in ("link_latency_us", "link_bandwidth_GBps"):
            v = getattr(self, f)
            require(v is None or v > 0, f"topology.{f}={v!r} must be a number > 0 or null")
        require(self.nccl_hops in ("constants", "links"),
                f"topology.nccl_hops={self.nccl_hops!r} is not one of ['constants', 'links']")
        require(self.nodes == "auto" or (isinstance(self.nodes, int) and self.nodes >= 1),
                f"topology.nodes={self.nodes!r} must be 'auto' or an integer >= 1")
        require(self.gpus_per_node >= 1, f"topology.gpus_per_node={self.gpus_per_node!r} must be >= 1")


@dataclass(frozen=True)
class WorkloadConfig:
    source: str = "bundled"
    trace: str = "azure_code"
    path: str | None = None
    format: str = "auto"
    rate_scale: float = 1.0
    max_requests: int | None = None
    arrival: str = "poisson"
    rate_per_s: float = 1.0
    cv: float = 2.0
    prompt_tokens: Any = 512
    output_tokens: Any = 128
    # Bootstrap the request lengths with the root ``seed`` (arrival times kept): one draw of the same
    # traffic, for the spread of results over replays.
    resample: bool = False
    # Time-varying demand: a CSV of ``time_s,multiplier`` knots (one cycle, repeated) multiplying
    # the arrival rate over time (workloads/rate_profile.py); null: the workload's own rate.
    rate_profile: str | None = None
    # The (truncated) trace replayed this many times back to back before rate changes.
    repeat: int = 1

    def __post_init__(self) -> None:
        require(isinstance(self.repeat, int) and not isinstance(self.repeat, bool) and self.repeat >= 1,
                f"workload.repeat={self.repeat!r} must be an integer >= 1")
        require(self.rate_profile is None or (isinstance(self.rate_profile, str) and bool(self.rate_profile)),
                f"workload.rate_profile={self.rate_profile!r} must be a CSV path or null")
        require(self.source in ("bundled", "file", "synthetic"),
                f"workload.source={self.source!r} is not one of ['bundled', 'file', 'synthetic']")
        require(isinstance(self.rate_scale, (int, float)) and self.rate_scale > 0,
                f"workload.rate_scale={self.rate_scale!r} must be a number > 0")
        require(self.max_requests is None or (isinstance(self.max_requests, int) and self.max_requests >= 1),
                f"workload.max_requests={self.max_requests!r} must be an integer >= 1 or null")


@dataclass(frozen=True)
class OutputConfig:
    progress: str = "auto"
    write_parquet: bool = True
    overwrite: bool = False     # true: a run may replace another run's outputs in its directory
    format: str = "json"        # json: the JSON line on stdout, a readable summary on stderr; table: only the summary
    timeline: bool = False      # true: timeline.json, a Chrome trace of steps, requests and messages (Perfetto)
    timeline_window_s: tuple[float, float] | None = None   # [start, end] simulated seconds kept in the timeline

    def __post_init__(self) -> None:
        require(self.progress in ("auto", "always", "never"),
                f"output.progress={self.progress!r} is not one of ['auto', 'always', 'never']")
        require(self.format in ("json", "table"), f"output.format={self.format!r} is not one of ['json', 'table']")
        require(isinstance(self.timeline, bool), f"output.timeline={self.timeline!r} must be true or false")
        w = self.timeline_window_s
        if w is not None:
            numbers = isinstance(w, (list, tuple)) and len(w) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in w)
            require(numbers and 0 <= w[0] < w[1],
                    f"output.timeline_window_s={w!r} must be [start, end] in simulated seconds with 0 <= start < end")
            object.__setattr__(self, "timeline_window_s", (float(w[0]), float(w[1])))


@dataclass(frozen=True)
class DebugConfig:
    """Checks that cost time and catch simulator bugs, not user errors."""

    check_invariants: bool = False  # conservation and ordering checked at every step (sim/des/invariants.py)

    def __post_init__(self) -> None:
        require(isinstance(self.check_invariants, bool),
                f"debug.check_invariants={self.check_invariants!r} must be true or false")


@dataclass(frozen=True)
class SimConfig:
    """How the simulation itself runs (not what it models)."""

    fast_forward: bool = True       # steady decode spans as one event; results equal to stepping
    max_wall_s: float | None = None  # stop after this many wall-clock seconds (partial outputs, exit 3)

    def __post_init__(self) -> None:
        require(isinstance(self.fast_forward, bool), f"sim.fast_forward={self.fast_forward!r} must be true or false")
        require(self.max_wall_s is None or (isinstance(self.max_wall_s, (int, float))
                                            and not isinstance(self.max_wall_s, bool) and self.max_wall_s > 0),
                f"sim.max_wall_s={self.max_wall_s!r} must be a number of seconds > 0 or null")


@dataclass(frozen=True)
class FleetGroup:
    """Replicas of one hardware preset in a heterogeneous fleet (``fleet:`` list)."""

    hardware: HardwareSpec
    replicas: int
    tp: int
    pp: int


@dataclass(frozen=True)
class DisaggConfig:
    """Disaggregated prefill and decode (``disagg=pools``): a prefill pool and a decode pool,
    each ``{hardware, replicas, tp, pp}``, joined over InfiniBand; the KV cache of every prompt
    moves from its prefill GPUs to its decode GPUs over the network (``transfer``:
    ``layerwise``, each layer's KV as its own message as soon as the final prefill step has
    computed it, or ``whole``, one message per GPU pair after prefill)."""

    mode: str = "none"               # none | pools
    transfer: str = "layerwise"      # layerwise | whole
    prefill: FleetGroup | None = None
    decode: FleetGroup | None = None

    def __post_init__(self) -> None:
        require(self.mode in ("none", "pools"), f"disagg.mode={self.mode!r} is not one of ['none', 'pools']")
        require(self.transfer in ("layerwise", "whole"),
                f"disagg.transfer={self.transfer!r} is not one of ['layerwise', 'whole']")

    @property
    def enabled(self) -> bool:
        return self.mode == "pools"


@dataclass(frozen=True)
class RunConfig:
    hardware: HardwareSpec
    model: ModelSpec
    engine: EngineProfile
    precision: Precision
    parallel: ParallelConfig
    network: NetworkConfig
    topology: TopologyConfig
    workload: WorkloadConfig
    scheduler: SchedulerConfig
    output: OutputConfig
    speculative: SpeculativeConfig = SpeculativeConfig()
    cost: CostConfig = CostConfig()
    fleet: tuple[FleetGroup, ...] = ()
    disagg: DisaggConfig = DisaggConfig()
    seed: int = 0
    sim: SimConfig = SimConfig()
    debug: DebugConfig = DebugConfig()
    faults: FaultConfig = FaultConfig()
    autoscale: AutoscaleConfig = AutoscaleConfig()
    spinup: SpinupConfig = SpinupConfig()

    @property
    def gpus_per_replica(self) -> int:
        return self.parallel.gpus_per_replica + self.speculative.extra_gpus

    @property
    def gpus(self) -> int:
        return sum(g.gpus_per_replica * g.parallel.dp for g in self.groups())

    def groups(self) -> list["RunConfig"]:
        """One homogeneous config per fleet group (hardware, tp, pp, dp = its replicas, and a
        topology its hardware can have: PCIe cards in a PCIe box, NVLink GPUs in HGX nodes,
        InfiniBand between nodes when a group outgrows one); the config itself when there is
        no ``fleet``. Disaggregated pools are the groups ``[prefill, decode]``, each on
        InfiniBand-connected nodes (``multi_node_ib``)."""
        if not self.fleet:
            return [self]
        out = []
        for g in self.fleet:
            topo = self.topology
            if self.disagg.enabled:
                out.append(replace(self, hardware=g.hardware, fleet=(),
                                   topology=replace(topo, kind="multi_node_ib", nodes="auto"),
                                   parallel=self._group_parallel(g)))
                continue
            gpus = g.tp * g.pp * g.replicas
            if g.hardware.scaleup_link == "pcie" and topo.kind in ("hgx", "multi_node_ib", "nvl72"):
                topo = replace(topo, kind="pcie_box")        # a PCIe card has no NVSwitch node
            elif g.hardware.scaleup_link != "pcie" and topo.kind == "pcie_box":
                topo = replace(topo, kind="hgx")
            if topo.kind == "hgx" and gpus > topo.gpus_per_node:
                topo = replace(topo, kind="multi_node_ib", nodes="auto")
            out.append(replace(self, hardware=g.hardware, topology=topo, fleet=(), parallel=self._group_parallel(g)))
        return out

    def _group_parallel(self, g: FleetGroup) -> ParallelConfig:
        """A group's parallel plan: its tp, pp and replicas; expert parallelism, when on, over
        its own tp GPUs."""
        return replace(self.parallel, tp=g.tp, pp=g.pp, dp=g.replicas, ep=g.tp if self.parallel.ep > 1 else 1)


