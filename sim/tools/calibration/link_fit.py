"""Fit per-link latency and bandwidth to nccl-tests logs (pure: no files, no printing).

Model (NCCL's own tuning formula, :func:`sim.cost.collectives.nccl_model_s`, the cheapest of the
LL/LL128/Simple protocols), for a log of ``n`` ranks on ``nodes`` nodes with ``r = n/nodes``
ranks per node, each process driving ``g`` GPUs::

    t = software + launch (g - 1)
        + NCCL_base + m ((r - 1) hop_intra + log2(nodes) hop_net)       (m = 2 all-reduce, 1 all-gather)
        + m (n-1)/n S / (bandwidth x protocol factor)

* ``NCCL_base`` is NCCL's LL base latency (6.8 us, inside the formula); ``software`` (the
  engine's ``collective_software_us``, >= 0) is what the logs need on top of it. Every log has
  8 GPUs per node, so ``software`` trades one-for-one against ``14 hop_intra``: a weak prior
  pulls it to 0 (NCCL's base is then the whole fixed cost). Reported ``base_us`` is the sum.
* ``launch`` is the host cost of one thread launching on each extra GPU it drives
  (nccl-tests ``-g 8``). The A100 "thanos" pair (same node, ``-g 8`` vs ``mpirun -np 8``)
  identifies it; it is shared by every single-process run.
* ``hop_intra`` (GPU -> switch -> GPU route latency) is fitted per *system*: per GPU model as
  the logs name it (an A100-SXM4-40GB box is not the A100-SXM4-80GB one); ``hop_net`` (the
  network part of a cross-node route) per network kind (InfiniBand, RoCE) and system.
* bandwidth: within a node the scale-up link's per-direction bandwidth (single-node logs);
  across nodes the per-NIC bandwidth, ``ranks per node`` channels in parallel (one per rail).
  Both are bounded above by the datasheet (hardware preset / NIC line rate): they are the
  *effective* bandwidths of the LL/LL128 regime of messages up to ``max_bytes``.

Residuals are ``log(predicted / measured)`` of each row up to ``max_bytes`` (1 MiB), where
``measured`` is the smaller of the out-of-place and in-place times (warm-up outliers only ever
slow a row down), weighted so that every log counts equally, with a soft-L1 loss so that a
noisy row (e.g. a dip) does not drag the fit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from sim.cost.collectives import NCCL_PROTOCOLS, nccl_model_s
from sim.errors import ConfigError
from sim.spec.hardware import HardwareSpec
from sim.tools.calibration.nccl_log import NcclLog

NCCL_LL_BASE_US = NCCL_PROTOCOLS["LL"][0]
# Per-GPU network line rate (GB/s per direction) when the caller gives none: InfiniBand NDR,
# 400 Gb/s per NIC (conf/topology/multi_node_ib.yaml); RoCE on OCI BM.GPU4.8, 16 x 100 GbE per
# 8 GPUs = 200 Gb/s per GPU (shared/calibration/nccl/README.md).
NIC_DATASHEET_GBps = {"ib": 50.0, "roce": 25.0}
# Weight of the prior that settles the per-hop latency where the logs cannot (see fit_links):
# small against a log's residuals (each log weighs 1), so it moves nothing the logs identify.
TIE_PRIOR_WEIGHT = 0.01


@dataclass(frozen=True)
class LogSystem:
    """One log and the system it ran on (what its parameters are shared with)."""

    log: NcclLog
    hardware: HardwareSpec
    network: str | None = None      # "ib" | "roce" for multi-node logs
    nic_GBps: float | None = None   # datasheet per-GPU network bandwidth (bound)

    @property
    def system(self) -> str:
        """Name of the fitted topology this log belongs to (e.g. ``a100_40g_roce``)."""
        return system_name(self.hardware, self.log.device, self.network if self.log.nodes > 1 else None)

    @property
    def intra_key(self) -> str:
        return system_name(self.hardware, self.log.device, None)

    @property
    def net_key(self) -> str | None:
        return self.system if self.log.nodes > 1 else None


def system_name(hardware: HardwareSpec, device: str, network: str | None) -> str:
    """``hardware`` preset name, ``_<mem>g`` when the log's GPU has another memory size than the
    preset (A100-SXM4-40GB on the 80 GB preset), ``_pcie`` without NVLink, ``_<network>``."""
    name = hardware.name
    m = re.search(r"(\d+)\s*GB", device)
    if m and float(m.group(1)) != float(hardware.memory_GB):
        name += f"_{m.group(1)}g"
    if hardware.scaleup_link == "pcie":
        name += "_pcie"
    return f"{name}_{network}" if network else name


def network_from_name(name: str) -> str:
    """``roce`` when the log's name says so, else ``ib`` (InfiniBand)."""
    return "roce" if "roce" in name.lower() else "ib"


@dataclass(frozen=True)
class LinkFit:
    """Fitted parameters (us, GB/s) and the per-row errors of the formula model."""

    software_us: float
    launch_us: float
    hop_intra_us: dict[str, float]
    hop_net_us: dict[str, float]
    bw_intra_GBps: dict[str, float]
    bw_net_GBps: dict[str, float]
    bounds_GBps: dict[str, float] = field(default_factory=dict)

    @property
    def base_us(self) -> float:
        return NCCL_LL_BASE_US + self.software_us

    def collective_software_us(self, s: LogSystem) -> float:
        """The engine's ``collective_software_us`` for this log (launch cost of ``-g`` runs added)."""
        return self.software_us + self.launch_us * (s.log.gpus_per_process - 1)

    def hops_us(self, s: LogSystem) -> tuple[float, float]:
        return self.hop_intra_us[s.intra_key], self.hop_net_us.get(s.net_key or "", NCCL_PROTOCOLS["LL"][2])

    def bandwidth_GBps(self, s: LogSystem) -> float:
        """What ``nccl_model`` divides by: one scale-up link, or one NIC per channel."""
        if s.log.nodes > 1:
            return self.bw_net_GBps[s.net_key] * max(1, s.log.ranks_per_node)  # type: ignore[index]
        return self.bw_intra_GBps[s.intra_key]


def per_rank_bytes(log: NcclLog) -> np.ndarray:
    """Bytes per rank as the simulator's collectives take them (all-gather: each contribution)."""
    return log.bytes / log.ranks if log.collective == "allgather" else log.bytes


def formula_us(fit: LinkFit, s: LogSystem, nbytes: np.ndarray) -> np.ndarray:
    """Predicted times (us) of the model for ``nbytes`` per rank (see module docstring)."""
    log = s.log
    kind = "allgather" if log.collective == "allgather" else "allreduce"
    t = nccl_model_s(kind, log.ranks, log.ranks_per_node, log.nodes, np.asarray(nbytes, dtype=np.float64),
                     fit.bandwidth_GBps(s) * 1e9, 1.0, fit.hops_us(s))
    return np.asarray(t) * 1e6 + fit.collective_software_us(s)


def _check(systems: list[LogSystem]) -> None:
    if not systems:
        raise ConfigError("no nccl-tests logs to fit")
    for s in systems:
        if s.log.collective not in ("allreduce", "allgather"):
            raise ConfigError(f"{s.log.name}: collective {s.log.collective!r} is not fitted "
                              f"(the model covers allreduce and allgather logs)")
        if s.log.ranks % s.log.nodes:
            raise ConfigError(f"{s.log.name}: {s.log.ranks} ranks do not split evenly over {s.log.nodes} nodes")


def launch_identified(systems: list[LogSystem]) -> bool:
    """Whether some system has logs with and without one process driving several GPUs (the
    launch cost is then told apart from the per-hop latency; otherwise they trade off)."""
    per_proc: dict[str, set[bool]] = {}
    for s in systems:
        per_proc.setdefault(s.intra_key, set()).add(s.log.gpus_per_process > 1)
    return any(v == {True, False} for v in per_proc.values())


def fit_links(systems: list[LogSystem], max_bytes: float = 1 << 20, prior_weight: float = 1.0,
              launch_us: float | None = None) -> LinkFit:
    """Joint least-squares fit of all logs (see the module docstring for the model).

    ``launch_us`` holds the per-GPU launch cost fixed (e.g. at a joint fit's value when the
    logs given cannot identify it, see :func:`launch_identified`).
    """
    _check(systems)
    intra = sorted({s.intra_key for s in systems})
    net = sorted({s.net_key for s in systems if s.net_key})
    single = {s.intra_key for s in systems if s.log.nodes == 1}
    hw = {s.intra_key: s.hardware for s in systems}
    nic = {s.net_key: (s.nic_GBps or NIC_DATASHEET_GBps.get(s.network or "ib", 50.0)) for s in systems if s.net_key}
    # bounds: bandwidth never above the datasheet link (the NIC also sits behind one PCIe link)
    bw_max = {k: float(hw[k].scaleup_bandwidth_GBps) for k in intra}
    for s in systems:
        if s.net_key:
            bw_max[s.net_key] = min(float(nic[s.net_key]), float(s.hardware.pcie_bandwidth_GBps))
    names = (["software_us", "launch_us"] + [f"hop:{k}" for k in intra] + [f"net:{k}" for k in net]
             + [f"bw:{k}" for k in intra] + [f"bwnet:{k}" for k in net])
    x0 = np.array([0.5, 2.0] + [0.6] * len(intra) + [5.0] * len(net)
                  + [0.5 * bw_max[k] for k in intra] + [0.3 * bw_max[k] for k in net])
    lo = np.array([0.0, 0.0] + [0.05] * len(intra) + [0.1] * len(net) + [0.1] * (len(intra) + len(net)))
    hi = np.array([50.0, 20.0] + [10.0] * len(intra) + [50.0] * len(net)
                  + [bw_max[k] for k in intra] + [bw_max[k] for k in net])
    rows = [(s, per_rank_bytes(s.log)[s.log.bytes <= max_bytes], s.log.time_us[s.log.bytes <= max_bytes])
            for s in systems]
    if any(len(r[1]) == 0 for r in rows):
        empty = [r[0].log.name for r in rows if len(r[1]) == 0]
        raise ConfigError(f"{empty[0]}: no rows of at most {int(max_bytes)} bytes to fit")

    def make(x: np.ndarray) -> LinkFit:
        v = dict(zip(names, x))
        return LinkFit(software_us=v["software_us"], launch_us=v["launch_us"],
                       hop_intra_us={k: v[f"hop:{k}"] for k in intra}, hop_net_us={k: v[f"net:{k}"] for k in net},
                       bw_intra_GBps={k: v[f"bw:{k}"] for k in intra}, bw_net_GBps={k: v[f"bwnet:{k}"] for k in net},
                       bounds_GBps=bw_max)

    # Where the launch cost and the per-hop latency trade off (one-process logs without their
    # one-process-per-GPU pair, launch cost not given), the logs fix only a line of solutions
    # and the solver would stop anywhere on it (scipy releases differ by 1 us); a weak prior
    # pulling each system's hop latency toward its preset's (NCCL's per-hop figure) picks one point.
    tied = launch_us is None and not launch_identified(systems) and any(s.log.gpus_per_process > 1 for s in systems)
    hop_prior = np.array([max(float(hw[k].scaleup_latency_us), 0.05) for k in intra])
    hop_at = slice(2, 2 + len(intra))

    def residuals(x: np.ndarray) -> np.ndarray:
        fit = make(x)
        parts = [np.log(formula_us(fit, s, b) / t) / math.sqrt(len(t)) for s, b, t in rows]
        parts.append(np.array([prior_weight * x[0] / NCCL_LL_BASE_US]))
        if tied:
            parts.append(TIE_PRIOR_WEIGHT * np.log(x[hop_at] / hop_prior))
        return np.concatenate(parts)

    if launch_us is not None:
        if launch_us < 0:
            raise ConfigError(f"launch_us={launch_us!r} must be >= 0")
        x0[1], lo[1], hi[1] = launch_us, launch_us, launch_us + 1e-9
    x0 = np.clip(x0, lo, hi)
    sol = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05, x_scale="jac")
    fit = make(sol.x)
    # Intra-node bandwidth of a system seen only across nodes is not identified: report the datasheet.
    fit.bw_intra_GBps.update({k: bw_max[k] for k in intra if k not in single})
    return fit


def errors(s: LogSystem, predicted_us: np.ndarray, max_bytes: float = 1 << 20) -> dict:
    """Per-row relative errors ``predicted/measured - 1`` and their median |error| up to ``max_bytes``."""
    err = np.asarray(predicted_us) / s.log.time_us - 1.0
    small = s.log.bytes <= max_bytes
    return {"error": err, "median_abs_error": float(np.median(np.abs(err[small])))}


def topology_mapping(fit: LinkFit, s: LogSystem) -> dict:
    """The ``conf/topology`` mapping that reproduces ``s``'s system in the simulator.

    * NVLink node: ``hgx`` (GPU -> NVSwitch -> GPU totals ``link_latency_us``);
    * several nodes: ``multi_node_ib`` with the NIC's fitted latency/bandwidth (RoCE too:
      the graph calls its links ``infiniband``; only their numbers matter);
    * PCIe box without a switch (every pair crosses the CPU root complex): ``pcie_box`` with
      one GPU per "switch" (root port), so a GPU pair crosses 4 edges of
      ``link_latency_us / 2``: ``link_latency_us = hop_intra / 2``.
    """
    hop_intra, hop_net = fit.hops_us(s)
    bw_intra = fit.bw_intra_GBps[s.intra_key]
    log = s.log
    common = {"link_latency_us": round(hop_intra, 4), "link_bandwidth_GBps": round(bw_intra, 3), "nccl_hops": "links"}
    if s.hardware.scaleup_link == "pcie":
        if log.nodes > 1:
            raise ConfigError(f"{log.name}: multi-node PCIe-only systems are not modelled (topology=pcie_box is one box)")
        return {"kind": "pcie_box", "gpus_per_node": log.ranks, "gpus_per_switch": 1,
                **common, "link_latency_us": round(hop_intra / 2, 4)}
    if log.nodes == 1:
        return {"kind": "hgx", "nodes": 1, "gpus_per_node": log.ranks, **common}
    return {"kind": "multi_node_ib", "nodes": "auto", "gpus_per_node": log.ranks_per_node,
            "ib_bandwidth_GBps": round(fit.bw_net_GBps[s.net_key], 3),  # type: ignore[index]
            "ib_latency_us": round(hop_net, 4), "rail_optimized": True, **common}


def fabric_times_us(log: NcclLog, cfg, collective_software_us: float) -> np.ndarray:
    """The log's times (us) through the simulator's own collective path.

    The fabric the builder makes for ``cfg`` (a run config whose topology is the fitted one),
    with ``engine.allreduce_algorithm = nccl_model`` and the given ``collective_software_us``
    (the fitted software latency, plus the launch cost when one process drives several GPUs:
    :meth:`LinkFit.collective_software_us`); its group of the first ranks prices the log.
    """
    from dataclasses import replace

    from sim.build import make_fabric
    from sim.spec.engine import EngineProfile

    engine = EngineProfile(name="nccl_tests_fit", allreduce_algorithm="nccl_model", oneshot_max_bytes=0.0,
                           collective_software_us=collective_software_us)
    fabric = make_fabric(replace(cfg, engine=engine), oneshot_capable=False)
    group = fabric.group(list(fabric.gpus)[: log.ranks])
    nbytes = per_rank_bytes(log)
    t = group.allgather_s(nbytes) if log.collective == "allgather" else group.allreduce_s(nbytes)
    return np.asarray(t) * 1e6
