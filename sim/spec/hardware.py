"""Datasheet description of one accelerator (values with sources live in conf/hardware/).

Only what the chip *is* belongs here (capacity, peak rates, links, power, price); how well a
software engine uses it (achieved efficiencies, launch gaps) is an :class:`~sim.spec.engine.EngineProfile`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sim.errors import ConfigError, require


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU. Units: GB = 1e9 bytes, GB/s = 1e9 B/s, TFLOP/s = 1e12 FLOP/s."""

    name: str
    vendor: str
    memory_GB: float
    hbm_bandwidth_GBps: float
    sm_count: int
    flops_TFLOPs: Mapping[str, float | None]
    scaleup_link: str
    scaleup_bandwidth_GBps: float
    scaleup_latency_us: float
    pcie_bandwidth_GBps: float
    tdp_W: float
    idle_W: float
    usd_per_hour: float
    usd_per_hour_on_demand: float
    pcie_latency_us: float = 1.0     # one host-link copy's latency (NCCL's PCI hop, published_numbers.md §2.1)

    def __post_init__(self) -> None:
        for field in ("memory_GB", "hbm_bandwidth_GBps", "scaleup_bandwidth_GBps", "scaleup_latency_us",
                      "pcie_bandwidth_GBps", "pcie_latency_us", "tdp_W", "usd_per_hour", "usd_per_hour_on_demand"):
            value = getattr(self, field)
            require(isinstance(value, (int, float)) and value > 0,
                    f"hardware.{field}={value!r} for {self.name} must be a positive number")
        require(self.idle_W >= 0, f"hardware.idle_W={self.idle_W!r} for {self.name} must be >= 0")
        require(int(self.sm_count) >= 1, f"hardware.sm_count={self.sm_count!r} must be >= 1")
        require(self.scaleup_link in ("nvlink", "infinity_fabric", "pcie"),
                f"hardware.scaleup_link={self.scaleup_link!r} is not one of ['nvlink', 'infinity_fabric', 'pcie']")
        require(bool(self.flops_TFLOPs.get("bf16")), f"hardware.flops_TFLOPs.bf16 must be given for {self.name}")

    @property
    def hbm_bandwidth_Bps(self) -> float:
        return self.hbm_bandwidth_GBps * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_GB * 1e9

    def peak_flops(self, fmt: str) -> float:
        """Dense peak FLOP/s for a compute format; error if the chip lacks it."""
        value = self.flops_TFLOPs.get(fmt)
        if not value:
            have = sorted(k for k, v in self.flops_TFLOPs.items() if v)
            raise ConfigError(f"hardware {self.name} has no {fmt} tensor throughput (has {have}); choose another precision")
        return float(value) * 1e12
