"""The narrow network interface every fidelity implements, and the stage program it runs.

Modelled on ASTRA-sim's few-call network API: the rest of the simulator asks the network to
move bytes (``transfer``), to run a collective among ranks (``collective``) or to run one
pipeline stage's step — its local work interleaved with its collectives — (``run_stage``).
It never asks which fidelity it is talking to.

``run_stage`` is the batched form of ``collective`` for one step: under collective fidelity
the whole step is one timed event whose length the cost model priced (one event per step,
not one per collective, which is what lets an hour of traffic run in seconds); under message
fidelity the stage runs layer by layer and every collective is simulated message by message
through ``collective``. It is a SimPy process body (a generator) that the caller runs inside
its own process with ``yield from``, so a step costs no extra process.
"""
from __future__ import annotations

from dataclasses import dataclass
from heapq import heappush
from typing import Generator, NamedTuple, Protocol, Sequence

import simpy
from simpy.events import NORMAL

from sim.cost.step_time import StageWork, StepTime


@dataclass(frozen=True)
class StageProgram:
    """One pipeline stage's step as the network runs it.

    ``work``: the stage's local time and the collectives it issues (pre, per layer, post);
    ``groups``: rank groups per collective tag (``tp``, and ``rows``/``cols`` of a 2-D grid);
    ``priced_network_s``: the cost model's price of all those collectives (alpha-beta along
    the fabric's routes, less any overlap the engine achieves), used where the network does
    not simulate them one by one.
    """

    work: StageWork
    groups: dict[str, list[list[str]]]
    priced_network_s: float

    @property
    def communicates(self) -> bool:
        """Whether any collective of this stage spans more than one GPU."""
        return any(len(ranks) > 1 for ranks in self.groups["tp"])

    def priced(self) -> StepTime:
        """The stage's time with its collectives at their priced cost."""
        return self.work.local + StepTime(network_s=self.priced_network_s)


class Flow(NamedTuple):
    """Bytes one GPU sends another as ``messages`` equal messages, message ``l`` ready to leave
    at ``first_ready_s + l * interval_s`` (simulated seconds; a time already past: now), each
    paying the engine's software latency before it leaves (e.g. a KV cache layer by layer)."""

    src: str
    dst: str
    nbytes: float
    messages: int = 1
    first_ready_s: float = 0.0
    interval_s: float = 0.0


def event_at(env: simpy.Environment, when: float, value: object = None) -> simpy.Event:
    """An event that fires at simulated time ``when`` (>= now) exactly, not ``now + (when - now)``
    rounded: how spans and link queues keep the times stepping would reach by addition."""
    if when < env.now:
        raise ValueError(f"event_at({when}) is in the past (now {env.now})")
    event = simpy.Event(env)
    event._ok = True
    event._value = value
    heappush(env._queue, (when, NORMAL, next(env._eid), event))
    return event


class NetworkObserver(Protocol):
    """Told of every hop and collective a message-fidelity network simulates (the timeline,
    the run-time invariant checks)."""

    def hop(self, link: tuple[str, str], start_s: float, end_s: float, nbytes: float) -> None:
        """A message reserved ``link`` (one direction) from ``start_s`` to ``end_s``."""
        ...

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float, start_s: float, end_s: float) -> None:
        """A collective over ``ranks`` ran from ``start_s`` to ``end_s``."""
        ...


class Network(Protocol):
    """What the simulator may ask of a network; implemented by every fidelity."""

    fidelity: str

    def observe(self, observer: NetworkObserver) -> None:
        """Tell ``observer`` of every hop and collective simulated from now on (fidelities
        that simulate no hop have nothing to tell)."""
        ...

    @property
    def link_hops(self) -> int | None:
        """Link traversals simulated so far (None: this fidelity does not simulate hops)."""
        ...

    def transfer(self, src: str, dst: str, nbytes: float) -> simpy.Event:
        """An event that fires when ``nbytes`` sent from ``src`` have arrived at ``dst``."""
        ...

    def send_flows(self, flows: Sequence[Flow]) -> simpy.Event:
        """An event that fires when every message of every flow has arrived."""
        ...

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float) -> simpy.Event:
        """An event that fires when collective ``kind`` (allreduce, allgather) of ``nbytes`` per
        rank's buffer has completed on every rank of ``ranks``."""
        ...

    def run_stage(self, program: StageProgram) -> Generator[simpy.Event, object, StepTime]:
        """Run one stage's step inside the caller's process; returns its time in four parts."""
        ...
