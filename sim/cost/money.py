"""What a fleet costs to rent or to own, and the energy it draws, from simulated utilization.

Pure (no SimPy). Modelling assumptions:

* **Power.** A GPU draws ``idle_W`` when idle and ``tdp_W`` while busy (a step running on
  it), so its energy over a run is ``idle_W * T + (tdp_W - idle_W) * busy_s`` with ``busy_s``
  taken from the simulation; the host (CPUs, memory, NICs, fans) draws ``host_W_per_gpu[hardware]``
  per GPU for the whole run (a server's maximum power minus its GPUs' TDP: an upper bound); the facility multiplies everything by its PUE. Memory-bound decode
  draws less than TDP on real GPUs, so this is an upper bound on busy power.
* **Rent.** The fleet is paid for the whole run (first arrival to last finish), every GPU at
  the price per GPU-hour of the chosen pricing (``spot``/first column, ``on_demand``,
  ``reserved``); electricity is in the price. Autoscaled, only the GPU-seconds a replica is
  alive (starting, serving, draining, or down being replaced) are paid for and draw idle power.
  Owned GPUs cost their depreciation whether running or not: autoscaling saves their energy only.
* **Own.** Capital (GPUs, servers without GPUs, network ports for multi-node topologies) is
  depreciated linearly over ``depreciation_years`` of round-the-clock life; energy is paid
  at ``electricity_usd_per_kWh``. Maintenance, staff, space and financing are not included.

``usd_per_million_output_tokens`` is the fleet's cost over the run divided by its output
tokens: an idle fleet still costs money, so a lightly loaded run costs more per token.
``usd_per_million_output_tokens_busy`` charges only the GPU-hours in which a GPU computes
(physics.md section 5's definition, an optimistic floor for renting).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from sim.errors import ConfigError, require
from sim.spec.hardware import HardwareSpec

PRICINGS = ("spot", "on_demand", "reserved")


@dataclass(frozen=True)
class CostConfig:
    """The ``cost`` config group (``conf/cost/rent.yaml``, ``conf/cost/own.yaml``)."""

    model: str = "rent"
    pricing: str = "spot"
    reserved_usd_per_gpu_hour: dict[str, float | None] = field(default_factory=dict)
    purchase_usd_per_gpu: dict[str, float | None] = field(default_factory=dict)
    server_usd_per_node: dict[str, float | None] = field(default_factory=dict)
    network_usd_per_port: float = 0.0
    depreciation_years: float = 3.0
    pue: float = 1.2
    electricity_usd_per_kWh: float = 0.08
    host_W_per_gpu: dict[str, float] = field(default_factory=dict)   # per hardware preset; "default" for the rest
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.model in ("rent", "own"), f"cost.model={self.model!r} is not one of ['rent', 'own']")
        require(self.pricing in PRICINGS, f"cost.pricing={self.pricing!r} is not one of {list(PRICINGS)}")
        require(self.depreciation_years > 0, f"cost.depreciation_years={self.depreciation_years!r} must be > 0")
        require(self.pue >= 1.0, f"cost.pue={self.pue!r} must be >= 1 (facility power / IT power)")
        for f in ("electricity_usd_per_kWh", "network_usd_per_port"):
            require(getattr(self, f) >= 0, f"cost.{f}={getattr(self, f)!r} must be >= 0")

    def host_W(self, hardware: str) -> float:
        """Host power per GPU (CPUs, memory, NICs, fans) of a server of ``hardware``."""
        return float(self.host_W_per_gpu.get(hardware, self.host_W_per_gpu.get("default", 0.0)) or 0.0)

    def assumptions(self) -> dict[str, Any]:
        keep = ("model", "depreciation_years", "pue", "electricity_usd_per_kWh", "host_W_per_gpu",
                "network_usd_per_port") if self.model == "own" else ("model", "pricing", "pue", "host_W_per_gpu")
        d = asdict(self)
        return {k: d[k] for k in keep}


def _lookup(table: Mapping[str, float | None], hardware: str, field_name: str) -> float:
    value = table.get(hardware)
    if value is None:
        raise ConfigError(f"cost.{field_name}.{hardware} is not set (no public figure for {hardware}); "
                          f"set cost.{field_name}.{hardware}=VALUE or choose another cost model/pricing")
    return float(value)


def gpu_hour_price(cost: CostConfig, hw: HardwareSpec) -> float:
    """Rental price of one GPU-hour under ``cost.pricing``."""
    if cost.pricing == "spot":
        return hw.usd_per_hour
    if cost.pricing == "on_demand":
        return hw.usd_per_hour_on_demand
    return _lookup(cost.reserved_usd_per_gpu_hour, hw.name, "reserved_usd_per_gpu_hour")


def capital_usd(cost: CostConfig, hw: HardwareSpec, gpus: int, nodes: float, network_ports: int) -> dict[str, float]:
    """Purchase cost of a fleet: GPUs, servers around them, network ports."""
    return {"gpus_usd": gpus * _lookup(cost.purchase_usd_per_gpu, hw.name, "purchase_usd_per_gpu"),
            "servers_usd": nodes * _lookup(cost.server_usd_per_node, hw.name, "server_usd_per_node"),
            "network_usd": network_ports * cost.network_usd_per_port}


@dataclass(frozen=True)
class FleetUse:
    """What the simulation says about a fleet's run."""

    gpus: int
    nodes: float          # fractional in the analytic procurement bound
    network_ports: int
    makespan_s: float
    gpu_busy_s: float
    output_tokens: int
    alive_gpu_s: float | None = None   # autoscaling: GPU-seconds paid for over the makespan (None: gpus x makespan)

    @property
    def paid_gpu_s(self) -> float:
        return self.gpus * self.makespan_s if self.alive_gpu_s is None else self.alive_gpu_s


def peak_power_kW(cost: CostConfig, hw: HardwareSpec, gpus: int) -> float:
    """The facility power ``gpus`` GPUs of ``hw`` are provisioned for: every GPU at its TDP plus
    its host share, times the PUE (what a data-centre power envelope has to hold, whatever the
    load; the energy above uses the simulated utilization instead)."""
    return gpus * (hw.tdp_W + cost.host_W(hw.name)) * cost.pue / 1e3


def energy(cost: CostConfig, hw: HardwareSpec, use: FleetUse) -> dict[str, Any]:
    """Facility energy of the run from each GPU's busy time (see module docstring)."""
    paid = use.paid_gpu_s
    it_J = paid * (hw.idle_W + cost.host_W(hw.name)) + (hw.tdp_W - hw.idle_W) * use.gpu_busy_s
    facility_J = it_J * cost.pue
    util = use.gpu_busy_s / paid if paid > 0 else None
    return {"joules": facility_J, "kWh": facility_J / 3.6e6,
            "avg_power_W": facility_J / use.makespan_s if use.makespan_s > 0 else None,
            "gpu_utilization": util,
            "joules_per_output_token": facility_J / use.output_tokens if use.output_tokens else None}


def fleet_cost(cost: CostConfig, hw: HardwareSpec, use: FleetUse) -> dict[str, Any]:
    """Dollars per hour and per million output tokens, energy per token, and the assumptions."""
    return mixed_fleet_cost(cost, [(hw, use)])


def mixed_fleet_cost(cost: CostConfig, parts: list[tuple[HardwareSpec, FleetUse]]) -> dict[str, Any]:
    """:func:`fleet_cost` of a fleet made of groups of different hardware (each group's
    GPUs, servers, ports and busy time in its :class:`FleetUse`; every part has the run's
    makespan and output tokens): costs and energies add up."""
    makespan = parts[0][1].makespan_s
    tokens = parts[0][1].output_tokens
    hours = makespan / 3600.0
    per_hour = busy_usd = 0.0
    joules = busy_s = paid_s = 0.0
    gpus = 0
    out: dict[str, Any] = {"model": cost.model}
    capital = {"gpus_usd": 0.0, "servers_usd": 0.0, "network_usd": 0.0}
    capex_per_hour = energy_per_hour = 0.0
    groups = []
    for hw, use in parts:
        e = energy(cost, hw, use)
        joules += e["joules"]
        busy_s += use.gpu_busy_s
        paid_s += use.paid_gpu_s
        gpus += use.gpus
        if cost.model == "rent":
            price = gpu_hour_price(cost, hw)
            group_per_hour = (use.paid_gpu_s / makespan if makespan > 0 else use.gpus) * price
            busy_usd += use.gpu_busy_s / 3600.0 * price
        else:
            cap = capital_usd(cost, hw, use.gpus, use.nodes, use.network_ports)
            for k, v in cap.items():
                capital[k] += v
            group_capex = sum(cap.values()) / (cost.depreciation_years * 365.25 * 24.0)
            group_energy = (e["avg_power_W"] or 0.0) / 1e3 * cost.electricity_usd_per_kWh
            capex_per_hour += group_capex
            energy_per_hour += group_energy
            group_per_hour = group_capex + group_energy
            busy_usd += use.gpu_busy_s / 3600.0 * group_per_hour / use.gpus
        per_hour += group_per_hour
        groups.append({"hardware": hw.name, "gpus": use.gpus, "usd_per_hour": group_per_hour,
                       "gpu_utilization": e["gpu_utilization"]})
    out.update({"gpus": gpus, "nodes": sum(u.nodes for _, u in parts)})
    if cost.model == "own":
        out.update({**capital, "capex_usd_per_hour": capex_per_hour, "energy_usd_per_hour": energy_per_hour})
    scaled = any(u.alive_gpu_s is not None for _, u in parts)
    out.update({"usd_per_hour": per_hour, "usd_per_gpu_hour": (
        per_hour * makespan / paid_s if paid_s > 0 else None) if scaled else (per_hour / gpus if gpus else None)})
    per_mtok = (lambda usd: usd / tokens * 1e6) if tokens else (lambda usd: None)
    out.update({"usd_per_million_output_tokens": per_mtok(per_hour * hours),
                "usd_per_million_output_tokens_busy": per_mtok(busy_usd),
                "busy_gpu_hours": busy_s / 3600.0,
                "energy": {"joules": joules, "kWh": joules / 3.6e6,
                           "avg_power_W": joules / makespan if makespan > 0 else None,
                           "gpu_utilization": busy_s / paid_s if paid_s > 0 else None,
                           "joules_per_output_token": joules / tokens if tokens else None},
                "assumptions": {**cost.assumptions(), "sources": dict(cost.sources)}})
    if scaled:
        out["gpu_hours_paid"] = paid_s / 3600.0
    if len(parts) > 1:
        out["groups"] = groups
    return out


