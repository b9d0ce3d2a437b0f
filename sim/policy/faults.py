"""Failures and stragglers of a fleet's components (pure: what fails, when, and for how long).

Modelling assumptions (``faults=mtbf``):

* Every component fails as a Poisson process at ``1 / MTBF`` (exponential times between
  failures, the model behind an MTBF figure). A component of a replica that is down does not
  fail (it is not running); a failure whose replicas are all down already is not drawn.
* What a failure takes down: a GPU failure its replica (the tensor-parallel group and the
  pipeline: a lockstep replica cannot run without one of its GPUs); a scale-out link (NIC or
  cable) failure the replica using that GPU's link, and only when the replica's GPUs span more
  than one server (a replica inside one server never sends over it); an NVLink/NVSwitch or host
  failure every replica with a GPU in that server.
* A failed replica is down for ``detect_s`` (health check), plus ``repair_s`` (0: a spare
  server is ready, as fleets that swap nodes run), plus its spin-up (weights loaded, engine
  warmed up: :func:`sim.cost.spinup.spinup_s`). Its KV cache is lost.
* Stragglers (fail-slow GPUs, thermal throttling, a flapping link): each GPU starts straggling
  at ``1 / straggler_mtbf_hours`` for ``straggler_duration_s``, running at ``1 /
  straggler_slowdown`` of its speed; a lockstep TP group runs at its slowest GPU's pace, so the
  replica's local work (arithmetic and memory traffic) takes ``straggler_slowdown`` times as
  long while it lasts. Off by default: no fleet report gives a rate we could cite.
* Degraded links (a flapping or retraining link, congestion): each GPU's link of a replica whose
  steps have collectives (tensor parallelism) starts running degraded at ``1 / degraded_link_mtbf_hours`` for
  ``degraded_link_duration_s``; the replica's collectives are priced at
  ``degraded_link_latency_factor`` times the per-message latency (bandwidth unchanged) while it
  lasts. Off by default, for the same reason.

Default MTBFs are derived from the root causes of the 419 unexpected interruptions of Llama 3
405B's pre-training (Llama Team, "The Llama 3 Herd of Models", 2024, Table 5): 54 days on
16,384 H100 GPUs in 2,048 servers of 8. GPU: faulty GPU (NVLink included, as the paper counts
it) 148 + HBM3 72 + SRAM 19 + GPU system processor 17 + silent data corruption 6 + thermal
interface and sensor 6 = 268; scale-out link: network switch/cable 35 + NIC 7 = 42, per GPU
(one NIC per GPU); host: unplanned host maintenance 32 + SSD 3 + power supply 3 + chassis 2 +
IO expansion board 2 + CPU 2 + system memory 2 = 46, per server. Software causes of a training
job (software bug 54, NCCL watchdog 7, dependency 2) are left out: they are the training
stack's, not the fleet's. NVLink is not counted apart (the paper folds it into faulty GPU):
``nvlink_mtbf_hours`` is off unless set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from sim.errors import require

#: Llama 3 405B pre-training snapshot: GPUs, servers, hours (Llama 3 paper, section 3.3.4).
LLAMA3_GPUS = 16_384
LLAMA3_SERVERS = 2_048
LLAMA3_HOURS = 54 * 24
#: Unexpected interruptions by component class (Table 5; see the module docstring).
LLAMA3_INTERRUPTIONS = {"gpu": 148 + 72 + 19 + 17 + 6 + 6, "link": 35 + 7, "host": 32 + 3 + 3 + 2 + 2 + 2 + 2}

#: What a fault stops: a component of one GPU, or of one server.
KINDS = ("gpu", "link", "nvlink", "host", "straggler", "degraded_link")


def llama3_mtbf_hours(kind: str) -> float:
    """Per-component MTBF implied by the Llama 3 counts: component-hours / interruptions."""
    units = LLAMA3_SERVERS if kind == "host" else LLAMA3_GPUS
    return units * LLAMA3_HOURS / LLAMA3_INTERRUPTIONS[kind]


def _positive_or_none(value: object, name: str, unit: str) -> None:
    require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                              and math.isfinite(value) and value > 0),
            f"faults.{name}={value!r} must be a number of {unit} > 0, or null (never)")


def _non_negative(value: object, name: str) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0,
            f"faults.{name}={value!r} must be a number of seconds >= 0")


@dataclass(frozen=True)
class FaultConfig:
    """The ``faults`` config group (``conf/faults/{none,mtbf}.yaml``)."""

    kind: str = "none"                        # none | mtbf
    gpu_mtbf_hours: float | None = None       # per GPU
    link_mtbf_hours: float | None = None      # per GPU's scale-out NIC and cable
    nvlink_mtbf_hours: float | None = None    # per server's NVLink/NVSwitch domain
    host_mtbf_hours: float | None = None      # per server
    rate_scale: float = 1.0                   # multiplies every failure rate (an older fleet, a burn-in)
    detect_s: float = 0.0                     # from the failure until the replica is taken out
    repair_s: float = 0.0                     # then until its replacement starts loading (0: a spare is ready)
    recovery: str = "restart"                 # restart: in-flight requests recompute elsewhere | fail
    max_restarts: int = 3                     # a request restarted more often fails
    straggler_mtbf_hours: float | None = None   # per GPU: how often it starts straggling
    straggler_slowdown: float = 2.0           # the straggling group's local work takes this many times as long
    straggler_duration_s: float = 600.0
    degraded_link_mtbf_hours: float | None = None   # per GPU: how often its link starts running degraded
    degraded_link_latency_factor: float = 2.0  # the replica's collectives pay this many times the per-message latency
    degraded_link_duration_s: float = 600.0

    def __post_init__(self) -> None:
        require(self.kind in ("none", "mtbf"), f"faults.kind={self.kind!r} is not one of ['none', 'mtbf']")
        for f in ("gpu", "link", "nvlink", "host", "straggler", "degraded_link"):
            _positive_or_none(getattr(self, f"{f}_mtbf_hours"), f"{f}_mtbf_hours", "hours")
        require(isinstance(self.rate_scale, (int, float)) and not isinstance(self.rate_scale, bool)
                and math.isfinite(self.rate_scale) and self.rate_scale >= 0,
                f"faults.rate_scale={self.rate_scale!r} must be a number >= 0")
        for f in ("detect_s", "repair_s"):
            _non_negative(getattr(self, f), f)
        require(self.recovery in ("restart", "fail"), f"faults.recovery={self.recovery!r} is not one of ['restart', 'fail']")
        require(isinstance(self.max_restarts, int) and not isinstance(self.max_restarts, bool) and self.max_restarts >= 0,
                f"faults.max_restarts={self.max_restarts!r} must be an integer >= 0")
        require(isinstance(self.straggler_slowdown, (int, float)) and not isinstance(self.straggler_slowdown, bool)
                and math.isfinite(self.straggler_slowdown) and self.straggler_slowdown >= 1,
                f"faults.straggler_slowdown={self.straggler_slowdown!r} must be a number >= 1 (step time factor)")
        require(isinstance(self.straggler_duration_s, (int, float)) and not isinstance(self.straggler_duration_s, bool)
                and math.isfinite(self.straggler_duration_s) and self.straggler_duration_s > 0,
                f"faults.straggler_duration_s={self.straggler_duration_s!r} must be a number of seconds > 0")
        require(isinstance(self.degraded_link_latency_factor, (int, float))
                and not isinstance(self.degraded_link_latency_factor, bool)
                and math.isfinite(self.degraded_link_latency_factor) and self.degraded_link_latency_factor >= 1,
                f"faults.degraded_link_latency_factor={self.degraded_link_latency_factor!r} must be a number >= 1")
        require(isinstance(self.degraded_link_duration_s, (int, float)) and not isinstance(self.degraded_link_duration_s, bool)
                and math.isfinite(self.degraded_link_duration_s) and self.degraded_link_duration_s > 0,
                f"faults.degraded_link_duration_s={self.degraded_link_duration_s!r} must be a number of seconds > 0")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class FaultSource:
    """One component that can fail: its kind, name, rate, and the replicas it stops."""

    kind: str
    component: str              # a GPU's name, or "server<k>"
    rate_per_s: float
    replicas: tuple[int, ...]


def fault_sources(cfg: FaultConfig, replica_gpus: Sequence[Sequence[str]], server_of: dict[str, int],
                  collectives: Sequence[bool] | None = None) -> list[FaultSource]:
    """Every component of the fleet with a failure rate: per GPU (its failures and, for a
    replica spanning servers, its scale-out link's), per server (host, NVLink domain), the
    stragglers (per GPU) and degraded links (per GPU of a replica whose steps have collectives,
    ``collectives[k]``; default: more than one GPU). ``replica_gpus[k]``: replica ``k``'s GPUs;
    ``server_of``: a GPU's server."""
    def rate(mtbf_hours: float | None) -> float:
        return 0.0 if mtbf_hours is None else cfg.rate_scale / (mtbf_hours * 3600.0)

    out: list[FaultSource] = []
    on_server: dict[int, list[int]] = {}
    gpu_rate, link_rate = rate(cfg.gpu_mtbf_hours), rate(cfg.link_mtbf_hours)
    straggle = 0.0 if cfg.straggler_mtbf_hours is None else 1.0 / (cfg.straggler_mtbf_hours * 3600.0)
    degrade = 0.0 if cfg.degraded_link_mtbf_hours is None else 1.0 / (cfg.degraded_link_mtbf_hours * 3600.0)
    for k, gpus in enumerate(replica_gpus):
        servers = sorted({server_of[g] for g in gpus})
        for s in servers:
            on_server.setdefault(s, []).append(k)
        for g in gpus:
            if gpu_rate > 0:
                out.append(FaultSource("gpu", g, gpu_rate, (k,)))
            if link_rate > 0 and len(servers) > 1:
                out.append(FaultSource("link", g, link_rate, (k,)))
            if straggle > 0:
                out.append(FaultSource("straggler", g, straggle, (k,)))
            if degrade > 0 and (collectives[k] if collectives is not None else len(gpus) > 1):
                out.append(FaultSource("degraded_link", g, degrade, (k,)))
    for kind, mtbf in (("nvlink", cfg.nvlink_mtbf_hours), ("host", cfg.host_mtbf_hours)):
        r = rate(mtbf)
        if r > 0:
            out.extend(FaultSource(kind, f"server{s}", r, tuple(ks)) for s, ks in sorted(on_server.items()))
    return out


def replica_failure_rate_per_s(sources: Sequence[FaultSource], replica: int) -> float:
    """The rate at which replica ``replica`` goes down while up (stragglers do not stop it)."""
    return sum(s.rate_per_s for s in sources if s.kind not in ("straggler", "degraded_link") and replica in s.replicas)


def availability(failure_rate_per_s: float, down_s: float) -> float:
    """Long-run fraction of time a replica is up: exponential up-times of mean ``1 / rate``
    alternating with downtimes of mean ``down_s`` (an alternating renewal process:
    E[up] / (E[up] + E[down]))."""
    if failure_rate_per_s <= 0:
        return 1.0
    up = 1.0 / failure_rate_per_s
    return up / (up + down_s)


class FaultDraws:
    """The fleet's next fault: the superposition of every source's Poisson process, drawn
    from its own random stream (reproducible for a seed, whatever else the run draws)."""

    def __init__(self, sources: Sequence[FaultSource], rng: np.random.Generator) -> None:
        self.sources = list(sources)
        self.rng = rng
        rates = np.array([s.rate_per_s for s in self.sources], dtype=np.float64)
        self.total_rate_per_s = float(rates.sum())
        self._cumulative = np.cumsum(rates)

    def next(self) -> tuple[float, FaultSource] | None:
        """Seconds until the next fault of any source, and its source (None: nothing can fail)."""
        if self.total_rate_per_s <= 0:
            return None
        gap = float(self.rng.exponential(1.0 / self.total_rate_per_s))
        u = float(self.rng.random()) * self.total_rate_per_s
        i = min(int(np.searchsorted(self._cumulative, u, side="right")), len(self.sources) - 1)
        return gap, self.sources[i]


class FaultStream(Protocol):
    """Where a run's faults come from, one after another."""

    def next(self) -> tuple[float, FaultSource] | None:
        """Seconds from the previous fault (or the start) to the next, and what fails; None: no more."""
        ...


class ScriptedFaults:
    """A given list of faults ``(time_s, source)`` (a replay of a fleet's incident log, a test)."""

    def __init__(self, faults: Sequence[tuple[float, FaultSource]]) -> None:
        self._faults = sorted(faults, key=lambda f: f[0])
        self._i = 0
        self._last_s = 0.0

    def next(self) -> tuple[float, FaultSource] | None:
        if self._i >= len(self._faults):
            return None
        t, source = self._faults[self._i]
        self._i += 1
        gap, self._last_s = max(0.0, t - self._last_s), max(t, self._last_s)
        return gap, source
