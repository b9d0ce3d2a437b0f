"""Schemas of the run configuration and their validation (the only place that reads config).

Hydra composes YAML from ``conf/``; :func:`parse_config` turns the composed mapping into
frozen dataclasses, rejecting unknown keys and impossible values with one-line
:class:`~sim.errors.ConfigError` messages (field, value, what is allowed). Plain dataclass
validation is used instead of OmegaConf structured configs so that every error reads as one
sentence a user can act on.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from .cost import CostConfig, cost_from_mapping
from .engine import EngineProfile, engine_from_mapping
from .errors import ConfigError, require
from .hardware import HardwareSpec
from .model_spec import ModelSpec, model_from_mapping
from .precision import Precision
from .presets import hardware_from_mapping
from .router import ROUTERS
from .scheduler import SchedulerConfig
from .speculative import SpeculativeConfig
from .typecheck import check_types


def _dataclass(cls, values: Mapping[str, Any] | None, group: str):
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{group} has unknown field(s) {unknown}; allowed: {sorted(known)}")
    check_types(cls, values, group)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{group}: {exc}") from None


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 8
    pp: int = 1
    dp: int = 1
    tp_cols: int = 1
    router: str = "least_outstanding_tokens"

    def __post_init__(self) -> None:
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
    seed: int = 0
    arrival: str = "poisson"
    rate_per_s: float = 1.0
    cv: float = 2.0
    prompt_tokens: Any = 512
    output_tokens: Any = 128
    # Bootstrap the request lengths with ``seed`` (arrival times kept): one draw of the same
    # traffic, for the spread of results over replays.
    resample: bool = False

    def __post_init__(self) -> None:
        require(self.source in ("bundled", "file", "synthetic"),
                f"workload.source={self.source!r} is not one of ['bundled', 'file', 'synthetic']")
        require(isinstance(self.rate_scale, (int, float)) and self.rate_scale > 0,
                f"workload.rate_scale={self.rate_scale!r} must be a number > 0")
        require(self.seed >= 0, f"workload.seed={self.seed!r} must be an integer >= 0")
        require(self.max_requests is None or (isinstance(self.max_requests, int) and self.max_requests >= 1),
                f"workload.max_requests={self.max_requests!r} must be an integer >= 1 or null")


@dataclass(frozen=True)
class OutputConfig:
    progress: str = "auto"
    write_parquet: bool = True

    def __post_init__(self) -> None:
        require(self.progress in ("auto", "always", "never"),
                f"output.progress={self.progress!r} is not one of ['auto', 'always', 'never']")


@dataclass(frozen=True)
class FleetGroup:
    """Replicas of one hardware preset in a heterogeneous fleet (``fleet:`` list)."""

    hardware: HardwareSpec
    replicas: int
    tp: int
    pp: int


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
    seed: int = 0

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
        no ``fleet``."""
        if not self.fleet:
            return [self]
        out = []
        for g in self.fleet:
            topo = self.topology
            gpus = g.tp * g.pp * g.replicas
            if g.hardware.scaleup_link == "pcie" and topo.kind in ("hgx", "multi_node_ib", "nvl72"):
                topo = replace(topo, kind="pcie_box")        # a PCIe card has no NVSwitch node
            elif g.hardware.scaleup_link != "pcie" and topo.kind == "pcie_box":
                topo = replace(topo, kind="hgx")
            if topo.kind == "hgx" and gpus > topo.gpus_per_node:
                topo = replace(topo, kind="multi_node_ib", nodes="auto")
            out.append(replace(self, hardware=g.hardware, topology=topo, fleet=(),
                               parallel=replace(self.parallel, tp=g.tp, pp=g.pp, dp=g.replicas)))
        return out


def parse_config(cfg: Mapping[str, Any]) -> RunConfig:
    """Validate a composed config mapping (e.g. ``OmegaConf.to_container(cfg)``)."""
    cfg = dict(cfg)
    for group in ("hardware", "model", "engine"):
        require(isinstance(cfg.get(group), Mapping), f"config group {group!r} is missing")
    return RunConfig(
        hardware=hardware_from_mapping(dict(cfg["hardware"])),
        model=model_from_mapping(cfg["model"]),
        engine=engine_from_mapping(cfg["engine"]),
        precision=_dataclass(Precision, cfg.get("precision"), "precision"),
        parallel=_dataclass(ParallelConfig, cfg.get("parallel"), "parallel"),
        network=_dataclass(NetworkConfig, cfg.get("network"), "network"),
        topology=_dataclass(TopologyConfig, _without_notes(cfg.get("topology")), "topology"),
        workload=_dataclass(WorkloadConfig, cfg.get("workload"), "workload"),
        scheduler=_dataclass(SchedulerConfig, cfg.get("scheduler"), "scheduler"),
        output=_dataclass(OutputConfig, cfg.get("output"), "output"),
        speculative=_dataclass(SpeculativeConfig, cfg.get("speculative"), "speculative"),
        cost=cost_from_mapping(cfg.get("cost")),
        fleet=_fleet(cfg.get("fleet"), cfg.get("parallel") or {}),
        seed=_seed(cfg.get("seed", 0)),
    )


def _fleet(values: Any, parallel: Mapping[str, Any]) -> tuple[FleetGroup, ...]:
    """``fleet: [{hardware: h100, replicas: 2, tp: 4}, ...]``: replicas of several hardware
    presets behind one router (tp/pp default to ``parallel``'s); empty: a homogeneous fleet
    of ``parallel.dp`` replicas of ``hardware``."""
    from .presets import load_hardware

    if values in (None, [], ()):
        return ()
    require(isinstance(values, (list, tuple)), f"fleet={values!r} must be a list of groups "
                                               "({hardware: NAME, replicas: N[, tp: T, pp: P]})")
    groups = []
    for i, g in enumerate(values):
        require(isinstance(g, Mapping), f"fleet[{i}]={g!r} must be a mapping with hardware and replicas")
        unknown = sorted(set(g) - {"hardware", "replicas", "tp", "pp"})
        require(not unknown, f"fleet[{i}] has unknown field(s) {unknown}; allowed: ['hardware', 'pp', 'replicas', 'tp']")
        require("hardware" in g and "replicas" in g, f"fleet[{i}] needs hardware and replicas")
        for f in ("replicas", "tp", "pp"):
            v = g.get(f, parallel.get(f, 1))
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                    f"fleet[{i}].{f}={v!r} must be an integer >= 1")
        groups.append(FleetGroup(load_hardware(str(g["hardware"])), int(g["replicas"]),
                                 int(g.get("tp", parallel.get("tp", 1))), int(g.get("pp", parallel.get("pp", 1)))))
    return tuple(groups)


def _without_notes(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A topology mapping without its ``fitted``/``description`` blocks (documentation only)."""
    return {k: v for k, v in dict(values or {}).items() if k not in ("fitted", "description")}


def _seed(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"seed={value!r} must be an integer >= 0")
    return value
