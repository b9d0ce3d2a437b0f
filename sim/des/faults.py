"""Faults as a SimPy process: the fleet's next failure or straggler, applied to the cluster.

What fails and when comes from a :class:`sim.policy.faults.FaultStream` (pure: drawn from
per-component MTBFs on its own random stream, or scripted); this process waits for it, takes the replicas down through the cluster
(:meth:`sim.des.simulation.Cluster.take_down`), brings each back after its downtime, and
starts and ends stragglers. It schedules events per fault, never per step, so a fault-free
stretch of simulated time costs nothing. ``faults.parquet`` gets one row per fault.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

import pyarrow as pa
import simpy

from sim.observe.recorder import rows_table
from sim.policy.faults import FaultSource, FaultStream

if TYPE_CHECKING:
    from sim.des.replica import Replica


class Fleet(Protocol):
    """What faults act on (:class:`sim.des.simulation.Cluster`)."""

    replicas: list[Replica]

    def powered(self, replica: int) -> bool: ...

    def take_down(self, replicas: Sequence[int]) -> tuple[int, int]: ...

    def bring_up(self, replica: int) -> None: ...

FAULTS = pa.schema([
    ("fault", pa.int64()),                  # in order of time
    ("time_s", pa.float64()),
    ("kind", pa.string()),                  # gpu | link | nvlink | host | straggler | degraded_link
    ("component", pa.string()),             # the GPU (gpu, link, straggler, degraded_link) or server (nvlink, host)
    ("replicas", pa.list_(pa.int32())),     # the replicas it took down (a straggler, a degraded link: slowed)
    ("gpus", pa.int32()),                   # their GPUs
    ("end_s", pa.float64()),                # the last of them serves again (a straggler: full speed again)
    ("requests_restarted", pa.int64()),
    ("requests_failed", pa.int64()),
])


#: Faults that slow a replica instead of stopping it.
SLOWDOWNS = ("straggler", "degraded_link")


@dataclass
class FaultLog:
    """The run's faults, one row each, and what they cost."""

    rows: list[tuple] = field(default_factory=list)
    down_gpu_s: float = 0.0         # GPU-seconds of replicas down (to the end of the run)
    restarted: int = 0
    failed: int = 0
    expected_availability: float = 1.0   # the closed form, GPU-weighted (sim.policy.faults.availability)
    gpus: int = 0                   # the replicas' GPUs

    def summary(self, sim_time_s: float, alive_gpu_s: float | None = None) -> dict[str, float | int]:
        """``summary.json``'s ``faults``: failures (stragglers apart), GPU-hours down, requests
        restarted and failed, and the fleet's availability (GPU-weighted time up, of the GPU time
        replicas were running: ``alive_gpu_s`` when autoscaled) measured and by the closed form."""
        failures = sum(1 for r in self.rows if r[2] not in SLOWDOWNS)
        span = self.gpus * sim_time_s if alive_gpu_s is None else alive_gpu_s
        return {"count": failures, "stragglers": sum(1 for r in self.rows if r[2] == "straggler"),
                "degraded_links": sum(1 for r in self.rows if r[2] == "degraded_link"),
                "gpu_hours_lost": self.down_gpu_s / 3600.0,
                "requests_restarted": self.restarted, "requests_failed": self.failed,
                "availability": 1.0 - self.down_gpu_s / span if span > 0 else 1.0,
                "availability_expected": self.expected_availability}

    def table(self) -> pa.Table:
        return rows_table(self.rows, FAULTS)


class FaultInjector:
    """Draws the fleet's faults one after another and applies them to ``cluster``."""

    def __init__(self, env: simpy.Environment, cluster: Fleet, draws: FaultStream, down_s: Sequence[float],
                 stage_of: dict[str, tuple[int, int]], straggler_slowdown: float, straggler_duration_s: float,
                 degraded_duration_s: float = 0.0) -> None:
        """``down_s[k]``: how long replica ``k`` stays down after a fault (detection, repair,
        spin-up); ``stage_of[gpu]``: (replica, stage) of a GPU; a straggler lasts
        ``straggler_duration_s``, a degraded link ``degraded_duration_s``."""
        self.env, self.cluster, self.draws = env, cluster, draws
        self.down_s = list(down_s)
        self.stage_of = stage_of
        self.slowdown = straggler_slowdown
        self.duration_s = {"straggler": straggler_duration_s, "degraded_link": degraded_duration_s}
        self.log = FaultLog(gpus=self._gpus(range(len(cluster.replicas))))
        self._down_since: dict[int, float] = {}
        env.background += 1             # type: ignore[attr-defined]
        #: (kind, replica, stage) -> (the replica's epoch, slowdowns of that kind active there)
        self._slowed: dict[tuple[str, int, int], tuple[int, int]] = {}
        env.process(self.run())

    def run(self):
        while True:
            nxt = self.draws.next()
            if nxt is None:
                self.env.background -= 1
                return
            gap, source = nxt
            yield self.env.timeout(gap)
            if source.kind in SLOWDOWNS:
                self._slow(source)
            else:
                self._fail(source)

    def _gpus(self, replicas: Sequence[int]) -> int:
        return sum(len(g) for k in replicas for g in self.cluster.replicas[k].stage_gpus)

    def _fail(self, source: FaultSource) -> None:
        cluster, now = self.cluster, self.env.now
        hit = [k for k in source.replicas if cluster.replicas[k].up and cluster.powered(k)]
        if not hit:
            return                      # its replicas are down already: nothing of it is running
        for k in hit:
            self._down_since[k] = now
        restarted, failed = cluster.take_down(hit)
        self.log.restarted += restarted
        self.log.failed += failed
        end = max(now + self.down_s[k] for k in hit)
        self.log.rows.append((len(self.log.rows), now, source.kind, source.component, hit, self._gpus(hit), end,
                              restarted, failed))
        for k in hit:
            self.env.process(self._restore(k, self.down_s[k]))

    def _restore(self, replica: int, down_s: float):
        yield self.env.timeout(down_s)
        self.log.down_gpu_s += (self.env.now - self._down_since.pop(replica)) * self._gpus([replica])
        self.cluster.bring_up(replica)

    def _slow(self, source: FaultSource) -> None:
        """A straggling GPU (its stage's local work slower) or a degraded link (the replica's
        collectives at a higher per-message latency) for its duration."""
        k, stage = self.stage_of[source.component]
        replica = self.cluster.replicas[k]
        if not replica.up or not self.cluster.powered(k):
            return
        key = (source.kind, k, stage if source.kind == "straggler" else 0)
        epoch, active = self._slowed.get(key, (replica.epoch, 0))
        self._slowed[key] = (replica.epoch, (active if epoch == replica.epoch else 0) + 1)
        self._apply(key, True)
        now, took = self.env.now, self.duration_s[source.kind]
        self.log.rows.append((len(self.log.rows), now, source.kind, source.component, [k], 1, now + took, 0, 0))
        self.env.background += 1       # type: ignore[attr-defined]   # its end is no progress either
        self.env.process(self._unslow(key, replica.epoch, took))

    def _apply(self, key: tuple[str, int, int], on: bool) -> None:
        kind, k, stage = key
        replica = self.cluster.replicas[k]
        if kind == "straggler":
            replica.straggle(stage, self.slowdown if on else 1.0)
        else:
            replica.degrade(on)

    def _unslow(self, key: tuple[str, int, int], epoch: int, took: float):
        yield self.env.timeout(took)
        self.env.background -= 1       # type: ignore[attr-defined]
        replica = self.cluster.replicas[key[1]]
        if replica.epoch != epoch or key not in self._slowed:
            return                      # down or off meanwhile: it came back on other GPUs
        active = self._slowed[key][1] - 1
        if active:
            self._slowed[key] = (epoch, active)
        else:
            del self._slowed[key]
            self._apply(key, False)

    def close(self, end_s: float) -> FaultLog:
        """The log at the end of the run: replicas still down count until ``end_s``."""
        for k, since in self._down_since.items():
            self.log.down_gpu_s += (end_s - since) * self._gpus([k])
        self._down_since.clear()
        return self.log
