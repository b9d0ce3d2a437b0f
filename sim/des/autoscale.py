"""Replica lifetimes as SimPy processes: the autoscaler, and the log of every state change.

A fleet is built at its largest (``autoscale.max_replicas``); a replica is *off* (no cost,
never routed to), *starting* (paid for, spinning up: :func:`sim.cost.spinup.spinup_s`),
*serving*, *draining* (paid for, routed nothing new, off once its last request finishes) or
*down* (a fault; see :mod:`sim.des.faults`). The autoscaler wakes every ``interval_s``, observes
the fleet, asks the pure policy (:class:`sim.policy.autoscale.Scaler`) how many replicas to
run, starts off replicas (lowest index first) or drains serving ones (fewest requests first,
then the highest index). ``replicas.parquet`` has one row per change; cost and energy count
each replica's seconds alive (starting, serving, draining or down: a replica being replaced
after a fault is still paid for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections import deque
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import pyarrow as pa
import simpy

from sim.observe.recorder import rows_table
from sim.policy.autoscale import Observation, Scaler

if TYPE_CHECKING:
    from sim.des.replica import Replica
    from sim.policy.routing import Router

REPLICAS = pa.schema([
    ("time_s", pa.float64()),
    ("replica", pa.int32()),
    ("state", pa.string()),         # starting | serving | draining | off | down
    ("reason", pa.string()),        # initial | scale_up | spun_up | scale_down | drained | fault | repaired
    ("serving", pa.int32()),        # replicas serving after the change
    ("alive", pa.int32()),          # replicas paid for after the change (all but off)
])


@dataclass
class ReplicaLog:
    """Every replica's state over the run, its rows, and each replica's seconds alive."""

    gpus: list[int]                             # per replica
    state: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    alive_s: list[float] = field(default_factory=list)
    _since: list[float] = field(default_factory=list)
    scale_ups: int = 0
    scale_downs: int = 0

    def __post_init__(self) -> None:
        n = len(self.gpus)
        self.state = self.state or ["serving"] * n
        self.alive_s = [0.0] * n
        self._since = [0.0] * n

    def set(self, now_s: float, replica: int, state: str, reason: str, serving: int) -> None:
        was_alive = self.state[replica] != "off"
        if was_alive and state == "off":
            self.alive_s[replica] += now_s - self._since[replica]
        elif not was_alive and state != "off":
            self._since[replica] = now_s
        self.state[replica] = state
        self.rows.append((now_s, replica, state, reason, serving, sum(s != "off" for s in self.state)))

    def close(self, end_s: float) -> None:
        """Replicas alive at the end count until ``end_s``."""
        for k, s in enumerate(self.state):
            if s != "off":
                self.alive_s[k] += end_s - self._since[k]
                self._since[k] = end_s

    def alive_gpu_s(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """GPU-seconds paid for (every replica not off), over the run or within [start_s, end_s]."""
        if start_s is None or end_s is None:
            return float(sum(s * g for s, g in zip(self.alive_s, self.gpus)))
        total = 0.0
        since: dict[int, float] = {}
        alive: dict[int, bool] = {}
        for t, k, state, *_ in self.rows:
            on = state != "off"
            if alive.get(k, False) and not on:
                total += self.gpus[k] * max(0.0, min(t, end_s) - max(since[k], start_s))
            if on and not alive.get(k, False):
                since[k] = t
            alive[k] = on
        for k, on in alive.items():
            if on:
                total += self.gpus[k] * max(0.0, end_s - max(since[k], start_s))
        return total

    def summary(self, sim_time_s: float) -> dict[str, float | int]:
        """``summary.json``'s ``replicas``: replica-hours paid for, their mean and peak count."""
        alive = np.array([r[5] for r in self.rows], dtype=np.int64)
        return {"replica_hours": sum(self.alive_s) / 3600.0, "gpu_hours": self.alive_gpu_s() / 3600.0,
                "mean_alive": sum(self.alive_s) / sim_time_s if sim_time_s > 0 else float(len(self.gpus)),
                "peak_alive": int(alive.max()) if len(alive) else len(self.gpus),
                "scale_ups": self.scale_ups, "scale_downs": self.scale_downs}

    def table(self) -> pa.Table:
        return rows_table(self.rows, REPLICAS)


class ScaledFleet(Protocol):
    """What the autoscaler observes and acts on (:class:`sim.des.simulation.Cluster`)."""

    replicas: list[Replica]
    router: Router
    orphans: deque[int]
    lifecycle: ReplicaLog | None

    def serving(self) -> int: ...

    def serve(self, replica: int, reason: str) -> None: ...

    def drained_if_empty(self, replica: int) -> None: ...


class Autoscaler:
    """Evaluates the policy every ``interval_s`` and starts or drains replicas."""

    def __init__(self, env: simpy.Environment, cluster: ScaledFleet, scaler: Scaler, interval_s: float,
                 initial: int, spinup_s: Sequence[float]) -> None:
        self.env, self.cluster, self.scaler, self.interval_s = env, cluster, scaler, interval_s
        self.spinup_s = list(spinup_s)
        log = cluster.lifecycle
        assert log is not None
        for k, replica in enumerate(cluster.replicas):
            if k >= initial:
                replica.wanted = False
                cluster.router.down.add(k)
                log.state[k] = "off"
        for k in range(len(cluster.replicas)):
            log.rows.append((0.0, k, log.state[k], "initial", initial, initial))
        self._busy_at = self._busy()
        self._ttft: list[float] = []
        self._starts = [0] * len(cluster.replicas)
        env.background += 1             # type: ignore[attr-defined]      # per replica: starts so far (a spin-up is for its start)
        env.process(self.run())

    def _busy(self) -> list[float]:
        return [r.busy_s() for r in self.cluster.replicas]

    def first_token(self, ttft_s: float) -> None:
        """A request's time to first token (the slo policy's metric)."""
        self._ttft.append(ttft_s)

    def observe(self) -> Observation:
        cluster, log = self.cluster, self.cluster.lifecycle
        assert log is not None
        serving = [k for k, s in enumerate(log.state) if s == "serving"]
        busy = self._busy()
        used = sum(busy[k] - self._busy_at[k] for k in serving)
        self._busy_at = busy
        ttft = float(np.percentile(self._ttft, 90)) if self._ttft else None
        self._ttft = []
        requests = sum(cluster.router.in_flight) + len(cluster.orphans)
        return Observation(len(serving), log.state.count("starting"), requests,
                           used / (len(serving) * self.interval_s) if serving else 0.0, ttft)

    def run(self):
        env = self.env
        while True:
            yield env.timeout(self.interval_s)
            obs = self.observe()
            want = self.scaler.desired(obs, env.now)
            have = obs.serving + obs.starting
            if want > have:
                self._start(want - have)
            elif want < have:
                self._drain(have - want)

    def _start(self, n: int) -> None:
        """Start ``n`` replicas: draining ones first (they are warm: back to serving at once),
        then off ones, lowest index first."""
        cluster, log = self.cluster, self.cluster.lifecycle
        assert log is not None
        for k, state in enumerate(list(log.state)):
            if n and state == "draining" and cluster.replicas[k].up:
                cluster.replicas[k].wanted = True
                cluster.serve(k, "scale_up")
                n -= 1
        for k, state in enumerate(list(log.state)):
            if n and state == "off":
                cluster.replicas[k].wanted = True
                log.set(self.env.now, k, "starting", "scale_up", cluster.serving())
                log.scale_ups += 1
                self._starts[k] += 1
                self.env.process(self._spin_up(k, cluster.replicas[k].epoch, self._starts[k]))
                n -= 1

    def _spin_up(self, replica: int, epoch: int, start: int):
        yield self.env.timeout(self.spinup_s[replica])
        rep = self.cluster.replicas[replica]
        # a fault meanwhile: its repair serves it; stopped (and maybe started again) meanwhile: not this start's
        if rep.epoch == epoch and self._starts[replica] == start and rep.up and rep.wanted:
            self.cluster.serve(replica, "spun_up")

    def _drain(self, n: int) -> None:
        """Stop ``n`` replicas: starting ones first (nothing to drain), then serving ones
        with the fewest requests in flight (ties: the highest index)."""
        cluster, log = self.cluster, self.cluster.lifecycle
        assert log is not None
        for k in reversed(range(len(log.state))):
            if n and log.state[k] == "starting":
                cluster.replicas[k].wanted = False
                cluster.replicas[k].power_off()
                log.set(self.env.now, k, "off", "scale_down", cluster.serving())
                log.scale_downs += 1
                n -= 1
        serving = sorted((k for k, s in enumerate(log.state) if s == "serving"),
                         key=lambda k: (cluster.router.in_flight[k], -k))
        for k in serving[:n]:
            cluster.replicas[k].wanted = False
            cluster.router.down.add(k)
            log.scale_downs += 1
            log.set(self.env.now, k, "draining", "scale_down", cluster.serving())
            cluster.drained_if_empty(k)
