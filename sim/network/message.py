"""Message fidelity (``network.fidelity=message``): every hop of every message on FIFO links.

Every hop of every message is simulated on a :class:`Link` — one per link direction, FIFO,
with a per-hop latency and serialisation at its bandwidth, kept as the time it is next free —
so messages of different collectives and transfers contend for shared links.

Cut-through forwarding: a message holds a link while it serialises
(``max(n / bandwidth, until its tail has arrived from the previous hop)``), its head moves on
after the hop latency, and it is delivered when its tail leaves the last hop plus that hop's
latency. Uncontended, this is exactly ``sum(latency) + n / min(bandwidth)``.
"""
from __future__ import annotations

from typing import Generator, Sequence

import simpy

from sim.cost.fabric import Fabric
from sim.cost.step_time import StepTime
from sim.network.interface import Flow, NetworkObserver, StageProgram, event_at


class Link:
    """One direction of one physical link: FIFO, one message serialising at a time.

    The link keeps the time it is next free (``free_at``) rather than a queue of waiting
    messages: a message whose head reaches the link reserves it from ``max(now, free_at)``
    until its tail has serialised, in the order heads arrive (FIFO), at one event per hop.
    """

    __slots__ = ("free_at", "latency_s", "bandwidth_Bps", "bytes_sent", "busy_s")

    def __init__(self, latency_s: float, bandwidth_Bps: float) -> None:
        self.free_at = 0.0
        self.latency_s = latency_s
        self.bandwidth_Bps = bandwidth_Bps
        self.bytes_sent = 0.0
        self.busy_s = 0.0


class MessageNetwork:
    """Every hop of every message on FIFO links (per-message fidelity)."""

    fidelity = "message"

    def __init__(self, env: simpy.Environment, fabric: Fabric) -> None:
        self.env, self.fabric = env, fabric
        self.links: dict[tuple[str, str], Link] = {}
        for u, v in fabric.graph.edges:
            lat, bw = fabric.link((u, v))
            self.links[(u, v)] = Link(lat, bw)
        self.messages = 0
        self.link_hops = 0
        self.observers: list[NetworkObserver] = []

    def observe(self, observer: NetworkObserver) -> None:
        self.observers.append(observer)

    # ----- point to point -------------------------------------------------------------
    def _message(self, src: str, dst: str, nbytes: float):
        env = self.env
        self.messages += 1
        tail_in = env.now
        edges = self.fabric.edges(src, dst)
        self.link_hops += len(edges)
        observers = self.observers
        for edge in edges:
            link = self.links[edge]
            now = env.now
            start = now if link.free_at <= now else link.free_at   # FIFO behind earlier messages
            end = max(start + nbytes / link.bandwidth_Bps, tail_in)
            link.free_at = end
            link.bytes_sent += nbytes
            link.busy_s += end - start
            for o in observers:
                o.hop(edge, start, end, nbytes)
            tail_in = end + link.latency_s
            # the head reaches the next hop one hop latency after it starts on this link
            yield env.timeout(link.latency_s) if start == now else event_at(env, start + link.latency_s)
        if tail_in > env.now:
            yield env.timeout(tail_in - env.now)

    def _software(self):
        yield self.env.timeout(self.fabric.software_s)

    def transfer(self, src: str, dst: str, nbytes: float) -> simpy.Event:
        def proc():
            yield from self._software()
            yield from self._message(src, dst, nbytes)
        return self.env.process(proc())

    def send_flows(self, flows: Sequence[Flow]) -> simpy.Event:
        """Every message of every flow on the links, each leaving at its ready time (now if
        past) plus the software latency."""
        env = self.env
        software = self.fabric.software_s

        def send(f: Flow, leave_s: float):
            if leave_s > env.now:
                yield event_at(env, leave_s)
            yield from self._message(f.src, f.dst, f.nbytes / f.messages)

        now = env.now
        return env.all_of([env.process(send(f, max(now, f.first_ready_s + k * f.interval_s) + software))
                           for f in flows for k in range(f.messages)])

    # ----- collectives ---------------------------------------------------------------------
    def _send_then(self, src: str, dst: str, nbytes: float, done: simpy.Event):
        yield from self._message(src, dst, nbytes)
        done.succeed()

    def _ring(self, ranks: Sequence[str], chunk: float, steps: int):
        env, n = self.env, len(ranks)
        received = [[env.event() for _ in range(steps)] for _ in range(n)]

        def rank(r: int):
            for step in range(steps):
                if step > 0:
                    yield received[r][step - 1]
                env.process(self._send_then(ranks[r], ranks[(r + 1) % n], chunk, received[(r + 1) % n][step]))

        for r in range(n):
            env.process(rank(r))
        yield env.all_of([received[r][steps - 1] for r in range(n)])

    def _oneshot(self, ranks: Sequence[str], nbytes: float):
        env, n = self.env, len(ranks)
        done = []
        for r in range(n):
            for k in range(1, n):
                ev = env.event()
                done.append(ev)
                env.process(self._send_then(ranks[r], ranks[(r + k) % n], nbytes, ev))
        yield env.all_of(done)

    def collective(self, kind: str, ranks: Sequence[str], nbytes: float) -> simpy.Event:
        n = len(ranks)
        group = self.fabric.group(ranks)

        def proc():
            if n <= 1:
                return
            if kind == "alltoall":      # every rank sends its part for every other rank, at once
                yield from self._software()
                yield from self._oneshot(ranks, nbytes / n)
                return
            if group.algorithm == "nccl_model" or (group.algorithm == "custom" and kind == "allreduce"
                                                   and group.allreduce_algorithm(nbytes) != "ring"):
                # NCCL's tuning formula is not a message schedule, and the custom all-reduce's
                # peer-memory reads run below the links' bandwidth: one timed event on no link.
                yield self.env.timeout(group.allreduce_s(nbytes) if kind == "allreduce" else group.allgather_s(nbytes))
                return
            yield from self._software()
            orders = self.fabric.channel_orders(ranks)
            k = len(orders)
            if kind == "allreduce":
                if group.allreduce_algorithm(nbytes) == "ring":
                    yield self.env.all_of([self.env.process(self._ring(o, nbytes / k / n, 2 * (n - 1)))
                                           for o in orders])
                else:
                    yield from self._oneshot(ranks, nbytes)
            elif kind == "allgather":
                yield self.env.all_of([self.env.process(self._ring(o, nbytes / k, n - 1)) for o in orders])
            else:
                raise ValueError(f"unknown collective kind {kind!r}")
        done = self.env.process(proc())
        if self.observers and n > 1:
            start = self.env.now

            def tell(_) -> None:
                for o in self.observers:
                    o.collective(kind, ranks, nbytes, start, self.env.now)
            done.callbacks.append(tell)
        return done

    def run_stage(self, program: StageProgram) -> Generator[simpy.Event, object, StepTime]:
        """Layer by layer: the local work of a layer, then each of its collectives message by
        message (every row or column group of a 2-D grid at once). A stage without
        communication is one timed event, as under collective fidelity."""
        env, work, groups = self.env, program.work, program.groups
        if not program.communicates:
            t = program.priced()
            yield env.timeout(t.total_s)
            return t
        per_layer_s = work.local.total_s / max(1, work.layers)
        start = env.now

        def issue(c):
            return env.all_of([self.collective(c.kind, ranks, c.nbytes) for ranks in groups[c.group]])

        for c in work.pre_collectives:
            yield issue(c)
        quiet = work.layers - work.communicating_layers      # leading layers without collectives
        for layer in range(work.layers):
            yield env.timeout(per_layer_s)
            if layer >= quiet:
                for c in work.per_layer_collectives:
                    yield issue(c)
        for c in work.post_collectives:
            yield issue(c)
        return work.local + StepTime(network_s=env.now - start - work.local.total_s)
