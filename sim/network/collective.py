"""Collective fidelity (``network.fidelity=collective``, the default): one event per operation.

Each collective, transfer or stage step is one timeout whose length comes from the alpha-beta
schedules of :mod:`sim.cost.collectives` along the fabric's routes. Nothing contends: this is
the fidelity for long traces, exact wherever messages of different operations do not share a
link (one replica per NVSwitch domain, rail-optimised fabrics).
"""
from __future__ import annotations

from typing import Generator, Sequence

import simpy

from sim.cost.fabric import Fabric
from sim.cost.step_time import StepTime
from sim.network.interface import NetworkObserver, StageProgram


class CollectiveNetwork:
    """One event per collective or transfer (alpha-beta along the topology's paths)."""

    fidelity = "collective"
    link_hops = None   # one timed event per operation: no hop is simulated

    def __init__(self, env: simpy.Environment, fabric: Fabric) -> None:
        self.env, self.fabric = env, fabric

    def observe(self, observer: NetworkObserver) -> None:
        """Nothing finer than a step's network part is simulated: nothing to tell."""

    def duration_s(self, kind: str, ranks: Sequence[str], nbytes: float) -> float:
        group = self.fabric.group(ranks)
        if kind == "allreduce":
            return group.allreduce_s(nbytes)
        if kind == "allgather":
            return group.allgather_s(nbytes)
        raise ValueError(f"unknown collective kind {kind!r}")

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float) -> simpy.Event:
        return self.env.timeout(self.duration_s(kind, ranks, nbytes))

    def transfer(self, src: str, dst: str, nbytes: float) -> simpy.Event:
        return self.env.timeout(self.fabric.send_s(src, dst, nbytes))

    def run_stage(self, program: StageProgram) -> Generator[simpy.Event, object, StepTime]:
        """The whole stage as one timed event of its priced length."""
        t = program.priced()
        yield self.env.timeout(t.total_s)
        return t
