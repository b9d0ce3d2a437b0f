"""Turn composed configuration mappings into validated value objects (the only parsing code).

Hydra composes YAML from ``conf/``; these functions reject unknown keys and wrong types with
one-line :class:`~sim.errors.ConfigError` messages (field, value, what is allowed) and build
the frozen dataclasses of :mod:`sim.config.schema` and :mod:`sim.spec`.
"""
from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping

from sim.config.presets import load_preset
from sim.config.schema import (
    DebugConfig,
    DisaggConfig,
    FleetGroup,
    NetworkConfig,
    OutputConfig,
    ParallelConfig,
    RunConfig,
    SimConfig,
    TopologyConfig,
    WorkloadConfig,
)
from sim.config.typecheck import check_types
from sim.cost.money import CostConfig
from sim.cost.spinup import SpinupConfig
from sim.errors import ConfigError, require
from sim.policy.autoscale import AutoscaleConfig
from sim.policy.batching import SchedulerConfig
from sim.policy.faults import FaultConfig
from sim.policy.speculative import SpeculativeConfig
from sim.spec.engine import EngineProfile
from sim.spec.hardware import HardwareSpec
from sim.spec.model import ModelSpec
from sim.spec.precision import Precision


#: Top-level keys of a run's config (``conf/config.yaml``): its groups and settings.
TOP_LEVEL_KEYS = ("autoscale", "cost", "debug", "disagg", "engine", "faults", "fleet", "hardware", "model", "network", "output",
                  "parallel", "precision", "scheduler", "seed", "sim", "speculative", "spinup", "topology", "workload")


def group_fields(group: str) -> list[str] | None:
    """The keys a config group's schema allows (None: not a group with a fixed schema)."""
    schemas = {"precision": Precision, "parallel": ParallelConfig, "network": NetworkConfig,
               "topology": TopologyConfig, "workload": WorkloadConfig, "scheduler": SchedulerConfig,
               "output": OutputConfig, "speculative": SpeculativeConfig, "sim": SimConfig, "debug": DebugConfig, "cost": CostConfig,
               "faults": FaultConfig, "spinup": SpinupConfig, "autoscale": AutoscaleConfig,
               "engine": EngineProfile, "hardware": HardwareSpec, "model": ModelSpec}
    cls = schemas.get(group)
    return sorted(f.name for f in fields(cls)) if cls is not None else None


def parse_config(cfg: Mapping[str, Any], sections: tuple[str, ...] = ()) -> RunConfig:
    """Validate a composed config mapping (e.g. ``OmegaConf.to_container(cfg)``). Top-level
    keys other than a run's (and a tool's own ``sections``) are refused."""
    cfg = dict(cfg)
    allowed = set(TOP_LEVEL_KEYS) | set(sections) | {"hydra"}
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ConfigError(f"{unknown[0]}={cfg[unknown[0]]!r} is not a config key; allowed at the top level: "
                          f"{sorted(allowed - {'hydra'})}")
    for group in ("hardware", "model", "engine"):
        require(isinstance(cfg.get(group), Mapping), f"config group {group!r} is missing")
    hardware = hardware_from_mapping(dict(cfg["hardware"]))
    disagg = _disagg(cfg.get("disagg"), cfg.get("parallel") or {}, hardware)
    fleet = _fleet(cfg.get("fleet"), cfg.get("parallel") or {})
    if disagg.enabled:
        require(not fleet, "fleet and disagg=pools both set: a disaggregated deployment's hardware is given per pool "
                           "(disagg.prefill.hardware, disagg.decode.hardware); leave fleet empty")
        assert disagg.prefill is not None and disagg.decode is not None
        fleet = (disagg.prefill, disagg.decode)
    autoscale = _dataclass(AutoscaleConfig, cfg.get("autoscale"), "autoscale")
    parallel = _dataclass(ParallelConfig, cfg.get("parallel"), "parallel")
    if autoscale.enabled:
        require(not fleet, "autoscale with a mixed fleet (fleet: [...]) or disagg=pools is not built: "
                           "autoscaling scales one homogeneous group of replicas")
        if autoscale.max_replicas is not None:
            parallel = replace(parallel, dp=autoscale.max_replicas)    # the fleet is built at its largest
        require(autoscale.min_replicas <= parallel.dp,
                f"autoscale.min_replicas={autoscale.min_replicas} exceeds the fleet's {parallel.dp} replicas "
                f"(autoscale.max_replicas, or parallel.dp)")
        require(autoscale.initial_replicas is None or autoscale.initial_replicas <= parallel.dp,
                f"autoscale.initial_replicas={autoscale.initial_replicas} exceeds the fleet's {parallel.dp} replicas")
    return RunConfig(
        hardware=hardware,
        model=model_from_mapping(cfg["model"]),
        engine=engine_from_mapping(cfg["engine"]),
        precision=_dataclass(Precision, cfg.get("precision"), "precision"),
        parallel=parallel,
        network=_dataclass(NetworkConfig, cfg.get("network"), "network"),
        topology=_dataclass(TopologyConfig, _without_notes(cfg.get("topology")), "topology"),
        workload=_dataclass(WorkloadConfig, cfg.get("workload"), "workload"),
        scheduler=_dataclass(SchedulerConfig, cfg.get("scheduler"), "scheduler"),
        output=_dataclass(OutputConfig, cfg.get("output"), "output"),
        speculative=_dataclass(SpeculativeConfig, cfg.get("speculative"), "speculative"),
        cost=cost_from_mapping(cfg.get("cost")),
        fleet=fleet,
        disagg=disagg,
        seed=_seed(cfg.get("seed", 0)),
        sim=_dataclass(SimConfig, cfg.get("sim"), "sim"),
        debug=_dataclass(DebugConfig, cfg.get("debug"), "debug"),
        faults=_dataclass(FaultConfig, cfg.get("faults"), "faults"),
        spinup=_dataclass(SpinupConfig, cfg.get("spinup"), "spinup"),
        autoscale=autoscale,
    )


def _fleet(values: Any, parallel: Mapping[str, Any]) -> tuple[FleetGroup, ...]:
    """``fleet: [{hardware: h100, replicas: 2, tp: 4}, ...]``: replicas of several hardware
    presets behind one router (tp/pp default to ``parallel``'s); empty: a homogeneous fleet
    of ``parallel.dp`` replicas of ``hardware``."""
    if values in (None, [], ()):
        return ()
    require(isinstance(values, (list, tuple)), f"fleet={values!r} must be a list of groups "
                                               "({hardware: NAME, replicas: N[, tp: T, pp: P]})")
    return tuple(_group(g, f"fleet[{i}]", parallel) for i, g in enumerate(values))


def _group(g: Any, name: str, parallel: Mapping[str, Any], hardware: HardwareSpec | None = None) -> FleetGroup:
    """One ``{hardware, replicas, tp, pp}`` group (tp/pp default to ``parallel``'s; hardware to
    ``hardware`` where given)."""
    require(isinstance(g, Mapping), f"{name}={g!r} must be a mapping with hardware and replicas")
    unknown = sorted(set(g) - {"hardware", "replicas", "tp", "pp"})
    require(not unknown, f"{name} has unknown field(s) {unknown}; allowed: ['hardware', 'pp', 'replicas', 'tp']")
    has_hw = g.get("hardware") is not None or hardware is not None
    require(has_hw and "replicas" in g, f"{name} needs hardware and replicas")
    for f in ("replicas", "tp", "pp"):
        v = g.get(f, parallel.get(f, 1))
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name}.{f}={v!r} must be an integer >= 1")
    given = g.get("hardware")
    # a preset's name, or a whole hardware mapping (a sensitivity study's moved hardware)
    hw = (hardware_from_mapping(dict(given)) if isinstance(given, Mapping)
          else load_hardware(str(given)) if given is not None else hardware)
    assert hw is not None
    return FleetGroup(hw, int(g["replicas"]), int(g.get("tp", parallel.get("tp", 1))), int(g.get("pp", parallel.get("pp", 1))))


def _disagg(values: Any, parallel: Mapping[str, Any], hardware: HardwareSpec) -> DisaggConfig:
    """``disagg: {mode: pools, transfer: layerwise|whole, prefill: {...}, decode: {...}}``; a pool
    without ``hardware`` uses the run's ``hardware``."""
    values = dict(values or {})
    known = {"mode", "transfer", "prefill", "decode"}
    unknown = sorted(set(values) - known)
    require(not unknown, f"disagg has unknown field(s) {unknown}; allowed: {sorted(known)}")
    cfg = DisaggConfig(mode=values.get("mode", "none"), transfer=values.get("transfer", "layerwise"))
    if not cfg.enabled:
        return cfg
    pools = {}
    for pool in ("prefill", "decode"):
        pools[pool] = _group(values.get(pool), f"disagg.{pool}", parallel, hardware)
        require(pools[pool].hardware.scaleup_link != "pcie",
                f"disagg.{pool}.hardware={pools[pool].hardware.name} has no NVLink: disaggregated pools are built "
                f"on HGX-style nodes joined over InfiniBand; choose an NVLink preset")
    return DisaggConfig(cfg.mode, cfg.transfer, pools["prefill"], pools["decode"])


def _without_notes(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A topology mapping without its ``fitted``/``description`` blocks (documentation only)."""
    return {k: v for k, v in dict(values or {}).items() if k not in ("fitted", "description")}


def _seed(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"seed={value!r} must be an integer >= 0")
    return value


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


def engine_from_mapping(values: Mapping[str, Any]) -> EngineProfile:
    known = {f.name for f in fields(EngineProfile)}
    values = {k: v for k, v in dict(values).items() if k not in ("description", "fitted")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"engine has unknown field(s) {unknown}; allowed: {sorted(known)}")
    check_types(EngineProfile, values, "engine")
    return EngineProfile(**values)


def model_from_mapping(values: Mapping[str, Any]) -> ModelSpec:
    """Build a :class:`ModelSpec` from a config mapping; ``path`` loads a local HF config.json.

    With ``path`` (use the ``model=hf_config`` preset, whose shape fields are all null), the
    file's fields are read first and every non-null field of ``values`` overrides them, so
    ``model=hf_config model.path=/x/config.json model.num_hidden_layers=4`` works. A named
    preset combined with ``path`` is refused: its typed-in shape would silently win.
    """
    values = dict(values)
    path = values.pop("path", None)
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model has unknown field(s) {unknown}; allowed: {sorted(known | {'path'})}")
    if path == "???":
        raise ConfigError("model=hf_config needs model.path=/path/to/config.json")
    if path:
        if values.get("name") not in (None, "hf_config"):
            raise ConfigError(f"model.path={str(path)!r} needs model=hf_config (the {values.get('name')} preset's "
                              f"fields would override the file); use: model=hf_config model.path=...")
        merged = load_hf_config(path)
        merged.setdefault("name", Path(str(path)).parent.name or "hf_model")
        merged.update({k: v for k, v in values.items() if v is not None and k != "name"})
    else:
        merged = {k: v for k, v in values.items() if v is not None}
    missing = [f.name for f in fields(ModelSpec) if f.name not in merged and f.default is _MISSING]
    if missing:
        raise ConfigError(f"model is missing field(s) {missing}")
    check_types(ModelSpec, merged, "model")
    return ModelSpec(**merged)


_MISSING = fields(ModelSpec)[1].default  # dataclasses.MISSING sentinel, read without importing it


def load_hf_config(path: str | Path) -> dict[str, Any]:
    """Read the shape fields of a local Hugging Face ``config.json`` (no download)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"model.path={str(path)!r}: no such config.json file")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model.path={str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"model.path={str(path)!r}: config.json must hold a JSON object, not {type(raw).__name__}")
    if "text_config" in raw and "hidden_size" not in raw:
        raw = raw["text_config"]
    out: dict[str, Any] = {}
    for key in _HF_FIELDS:
        if key in raw and raw[key] is not None:
            out[key] = raw[key]
    # Common aliases in HF configs.
    if "num_local_experts" not in out:
        for alias in ("num_experts", "n_routed_experts"):
            if raw.get(alias):
                out["num_local_experts"] = int(raw[alias])
    if "head_dim" not in out and "hidden_size" in out and "num_attention_heads" in out:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    if "num_key_value_heads" not in out and "num_attention_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]
    if out.get("num_local_experts", 1) > 1 and raw.get("moe_intermediate_size") and "intermediate_size" not in out:
        out["intermediate_size"] = int(raw["moe_intermediate_size"])
    if "_name_or_path" in raw and raw["_name_or_path"]:
        out["name"] = str(raw["_name_or_path"]).split("/")[-1]
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in out]
    if missing:
        raise ConfigError(f"model.path={str(path)!r}: config.json lacks field(s) {missing}")
    return out


_HF_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size", "tie_word_embeddings", "num_local_experts",
              "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace", "kv_lora_rank", "q_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "num_experts_per_tok", "max_position_embeddings")


def hardware_from_mapping(values: dict[str, Any]) -> HardwareSpec:
    known = {f.name for f in fields(HardwareSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"hardware has unknown field(s) {unknown}; allowed: {sorted(known)}")
    missing = sorted(known - set(values))
    if missing:
        raise ConfigError(f"hardware {values.get('name')!r} is missing field(s) {missing}")
    check_types(HardwareSpec, values, "hardware")
    flops = values["flops_TFLOPs"]
    if not isinstance(flops, dict):
        raise ConfigError(f"hardware.flops_TFLOPs={flops!r} must be a mapping of format -> TFLOP/s")
    for fmt, v in flops.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"hardware.flops_TFLOPs.{fmt}={v!r} must be a positive number or null")
    return HardwareSpec(**values)


def cost_from_mapping(values: Mapping[str, Any] | None) -> CostConfig:
    values = dict(values or {})
    known = {f.name for f in fields(CostConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"cost has unknown field(s) {unknown}; allowed: {sorted(known)}")
    if isinstance(values.get("host_W_per_gpu"), (int, float)) and not isinstance(values.get("host_W_per_gpu"), bool):
        values["host_W_per_gpu"] = {"default": values["host_W_per_gpu"]}
    for f in ("reserved_usd_per_gpu_hour", "purchase_usd_per_gpu", "server_usd_per_node", "host_W_per_gpu", "sources"):
        if f in values and not isinstance(values[f], Mapping):
            raise ConfigError(f"cost.{f}={values[f]!r} must be a mapping of hardware preset -> value")
    for f in ("reserved_usd_per_gpu_hour", "purchase_usd_per_gpu", "server_usd_per_node", "host_W_per_gpu"):
        for k, v in dict(values.get(f, {})).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"cost.{f}.{k}={v!r} must be a number >= 0 or null")
    return CostConfig(**values)


def load_hardware(name: str) -> HardwareSpec:
    return hardware_from_mapping(load_preset("hardware", name))


def load_model(name: str) -> ModelSpec:
    return model_from_mapping(load_preset("model", name))


def load_engine(name: str) -> EngineProfile:
    return engine_from_mapping(load_preset("engine", name))
