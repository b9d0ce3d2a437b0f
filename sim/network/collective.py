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
from sim.network.interface import Flow, NetworkObserver, StageProgram, event_at


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
        if kind == "alltoall":
            return group.alltoall_s(nbytes)
        raise ValueError(f"unknown collective kind {kind!r}")

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float) -> simpy.Event:
        return self.env.timeout(self.duration_s(kind, ranks, nbytes))

    def transfer(self, src: str, dst: str, nbytes: float) -> simpy.Event:
        return self.env.timeout(self.fabric.send_s(src, dst, nbytes))

    def send_flows(self, flows: Sequence[Flow]) -> simpy.Event:
        """One event at the last flow's last arrival, in closed form: a flow's messages leave
        at their ready times plus the software latency, queue behind one another at the route's
        bottleneck bandwidth and arrive one route latency after they leave it, so its last
        message arrives at ``max(first + L m / beta, last + m / beta) + alpha``. Flows of one
        call that cross the same link share it fluidly (``beta``: the least over the route of
        a link's bandwidth over the flows crossing it: eight prefill ranks sending into one
        decode GPU share its NIC); flows of different calls do not contend at this fidelity."""
        now = self.env.now
        software = self.fabric.software_s
        paths = [self.fabric.pair(f.src, f.dst) for f in flows]
        users: dict = {}
        for path in paths:
            for edge, _, _ in path.hops:
                users[edge] = users.get(edge, 0) + 1
        end = now
        for f, path in zip(flows, paths):
            if not path.hops:       # a GPU sending to itself moves nothing over the network
                continue
            beta = min(bw / users[edge] for edge, _, bw in path.hops)
            end = max(end, flow_end_s(path, f, now, software, beta))
        return event_at(self.env, end)

    def run_stage(self, program: StageProgram) -> Generator[simpy.Event, object, StepTime]:
        """The whole stage as one timed event of its priced length."""
        t = program.priced()
        yield self.env.timeout(t.total_s)
        return t


def flow_end_s(path, flow: Flow, now: float, software_s: float, bandwidth_Bps: float | None = None) -> float:
    """When ``flow``'s last message arrives over ``path`` (a :class:`~sim.cost.collectives.PairPath`)
    at ``bandwidth_Bps`` (default: the route's bottleneck, uncontended; see
    :meth:`CollectiveNetwork.send_flows`)."""
    per_message_s = flow.nbytes / flow.messages / (path.bandwidth_Bps if bandwidth_Bps is None else bandwidth_Bps)
    first = max(now, flow.first_ready_s) + software_s
    last = max(now, flow.first_ready_s + (flow.messages - 1) * flow.interval_s) + software_s
    return max(first + flow.messages * per_message_s, last + per_message_s) + path.latency_s
