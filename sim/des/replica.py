"""A model replica as SimPy processes: its scheduler loop and the micro-batches in flight.

A replica is ``tp x pp`` GPUs. The GPUs of one pipeline stage work in lockstep on their
tensor-parallel shards, so one SimPy resource stands for a stage (a FIFO of capacity one:
one micro-batch at a time). Up to ``pp`` micro-batches are in flight, each made of requests
that are not in another micro-batch (a sequence's next token depends on its previous one).
With ``pp = 1`` this is plain iteration-level batching: one step at a time.

Each stage's step goes through the network's ``run_stage`` (its local work and its
collectives: one timed event under collective fidelity, layer by layer and message by message
under message fidelity — the replica never asks which); stage-to-stage activations go through
``network.transfer``.

A fault (``faults=mtbf``) halts a replica (:meth:`Replica.halt`): its processes are interrupted
where they are (the step in progress is lost), its requests and KV cache are gone; it serves
again after :meth:`Replica.resume`. A straggling GPU slows its stage's local work (arithmetic
and memory traffic, not collectives) by a factor from the next step on (:meth:`Replica.straggle`);
a degraded link prices its collectives at a higher per-message latency (:meth:`Replica.degrade`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import simpy

from sim.cost.placement import tp_groups
from sim.cost.step_time import StepPredictor, StepTime
from sim.network.interface import Network, StageProgram, event_at
from sim.policy.batching import ContinuousBatcher, DecodeSpan, StepPlan
from sim.policy.speculative import Speculation
from sim.spec.batch import BatchShape


#: The cause of the interrupt that halts a replica's processes (a fault).
HALT = "halt"


class StepSink(Protocol):
    """Where a replica reports its steps and tokens (:class:`sim.des.simulation.Cluster`)."""

    def on_step(self, replica: Replica, plan: StepPlan, start: float, duration: float, parts: StepTime,
                draft_s: float, accepted: dict[int, int]) -> None: ...

    def record_steps(self, replica: Replica, rows: int, *values: Any) -> None: ...

    def on_stage(self, replica: Replica, stage: int, start: float, end: float, plan: StepPlan) -> None: ...

    def check_steps(self, replica: Replica, plan: StepPlan, steps: int) -> None: ...

    checker: Any

    def on_tokens(self, replica: Replica, events: list[tuple[int, bool, bool]]) -> None: ...


class KVPeer(Protocol):
    """Where a replica of a disaggregated pool reports KV it can send or receive
    (:class:`sim.des.disagg.KVHandoff`)."""

    def reserved(self, replica: Replica, requests: list[int]) -> None: ...

    def prefill_step(self, replica: Replica, stage: int, plan: StepPlan, start_s: float, duration_s: float) -> None: ...


class Replica:
    """One replica's scheduler loop and steps.

    With one pipeline stage a step is planned, run and completed inside the replica's own
    process: one event per step under collective fidelity. With ``max_span > 1`` (set by the
    builder where step times do not depend on other traffic: collective fidelity, one stage,
    no speculation) consecutive steady decode steps are one event (:meth:`_span`), their
    times computed together; an arrival routed here mid-span cuts it at the step in progress.
    With ``pp > 1`` micro-batches are processes that queue for their stages.
    """

    def __init__(self, env: simpy.Environment, index: int, predictor: StepPredictor,
                 batcher: ContinuousBatcher, network: Network, stage_gpus: Sequence[Sequence[str]],
                 cluster: StepSink, tp_cols: int = 1, speculative: Speculation | None = None,
                 accept: Callable[[int, int], int] | None = None, max_span: int = 1,
                 swap_s: Callable[[int, int], float] | None = None) -> None:
        """``swap_s(out_blocks, in_blocks)``: seconds of the host copies a step's swaps take
        (preemption=swap), paid before the step's forward pass as vLLM's swapping engine did."""
        self.env, self.index = env, index
        self.swap_s = swap_s
        self.predictor, self.batcher, self.network = predictor, batcher, network
        self.stage_gpus = [tuple(g) for g in stage_gpus]
        self.stages = [simpy.Resource(env, capacity=1) for _ in self.stage_gpus]
        self.groups = [tp_groups(list(g), tp_cols) for g in self.stage_gpus]
        self.pp = len(self.stage_gpus)
        self.cluster = cluster
        self.speculative = speculative          # a SpeculativeDecoder, or None
        # tokens a sequence verifies per drafted levels (a chain's 1 + levels, or a draft tree's)
        self._verified = speculative.cfg.verified if speculative is not None else None
        self.accept = accept                    # (request, proposed) -> accepted drafts
        self.max_span = max_span
        self.inflight: list[simpy.Process] = []
        self._wake = env.event()
        self._in_span = False                   # waiting for a span's end (an arrival may cut it)
        self._span_cut = False
        self._span_bounds: np.ndarray = np.zeros(1)   # the span's step boundaries (while in one)
        self._span_seqs = 0
        self._span_parts: tuple = ()            # the span in progress: (span, compute, memory, network, fixed, duration)
        self._busy_from: tuple[float, float] | None = None   # one stage: (start, busy seconds then) of the step or span in progress
        self.steps = 0
        self.stage_busy_s = [0.0] * self.pp
        self.kv: KVPeer | None = None           # disaggregated serving (set by the builder)
        self.up = True                          # False while a fault has it down
        self.epoch = 0                          # faults it has had (a straggler's end is for its epoch)
        self.wanted = True                      # False: the autoscaler is letting it go (draining or off)
        self.slowdown = [1.0] * self.pp         # per stage: its local work takes this many times as long
        #: the collectives' prices while a link of the replica is degraded (set by the builder)
        self.degraded_predictor: StepPredictor | None = None
        self._net: StepPredictor = predictor    # what prices the collectives now
        self.process = env.process(self._loop())

    def _loop(self):
        """The replica's scheduler loop, ended by a halt."""
        try:
            yield from (self.run() if self.pp > 1 else self._run_single())
        except simpy.Interrupt as stop:
            if stop.cause != HALT:
                raise

    # ----- faults -------------------------------------------------------------------------------
    def halt(self) -> list[int]:
        """A fault took the replica's GPUs: stop its processes where they are (the step in
        progress is lost; a fast-forwarded span's steps that ended by now happened, as stepping
        would have had them), and return the requests it held, in request order; its KV cache,
        swap space and stragglers are gone."""
        if self._in_span:
            # steps ended before now: one ending exactly now is lost, as stepping loses it (the
            # fault was scheduled before that step began, so it comes first)
            done = int(np.searchsorted(self._span_bounds, self.env.now, side="left")) - 1
            if done >= 1:
                self._apply_span(min(done, len(self._span_bounds) - 1))
        self.up = False
        self.epoch += 1
        self._busy_from = None
        for p in (self.process, *self.inflight):
            if p.is_alive:
                p.interrupt(HALT)
        self.inflight = []
        self._in_span = self._span_cut = False
        self.slowdown = [1.0] * self.pp
        self._net = self.predictor
        return self.batcher.evict_all()

    def power_off(self) -> None:
        """Turned off (the autoscaler let it go, empty): its next start loads weights afresh, with
        an empty KV and prefix cache and none of its stragglers."""
        self.epoch += 1
        self.batcher.pool.clear()
        self.slowdown = [1.0] * self.pp
        self._net = self.predictor

    def busy_s(self) -> float:
        """Seconds the replica has computed so far (per stage on average), with one stage the
        step or fast-forwarded span in progress counted up to now (the same either way)."""
        if self._busy_from is not None:
            start, before = self._busy_from
            return before + self.env.now - start
        return sum(self.stage_busy_s) / self.pp

    def resume(self) -> None:
        """Serve again (on healthy GPUs), with an empty batch."""
        self.up = True
        self.stages = [simpy.Resource(self.env, capacity=1) for _ in self.stage_gpus]
        self._wake = self.env.event()
        self.process = self.env.process(self._loop())

    def degrade(self, on: bool) -> None:
        """A link of the replica is degraded (its per-message latency raised) from the next
        step on, or healthy again; a fast-forwarded span in progress is cut."""
        assert self.degraded_predictor is not None
        self._net = self.degraded_predictor if on else self.predictor
        self._poke()

    def straggle(self, stage: int, factor: float) -> None:
        """Stage ``stage``'s local work takes ``factor`` times as long from the next step on
        (1: back to full speed); a fast-forwarded span in progress is cut."""
        self.slowdown[stage] = factor
        self._poke()

    def submit(self, request: int) -> None:
        if self.cluster.checker is not None:
            self.cluster.checker.on_route(self.batcher.requests.request_id[request])
        self.batcher.add(request)
        self._poke()

    def await_kv(self, request: int) -> None:
        """``request``'s KV will come from the prefill pool: reserve blocks for it between steps."""
        self.batcher.incoming.append(request)
        self._poke()

    def receive_kv(self, request: int) -> None:
        """``request``'s KV has arrived: it decodes from the next step."""
        self.batcher.accept_kv(request)
        self._poke()

    def release_kv(self, request: int) -> None:
        """``request``'s KV blocks here are no longer needed (sent to the decode pool, or a
        reservation it will not use): free them, and let waiting work see the free blocks."""
        self.batcher.release(request)
        self._poke()

    def _reserve(self) -> None:
        """Between steps: blocks for the KV coming from the prefill pool, where free."""
        if self.batcher.incoming:
            got = self.batcher.reserve_incoming()
            if got:
                assert self.kv is not None
                self.kv.reserved(self, got)

    def _poke(self) -> None:
        """Something changed the batch: cut a span in progress, or wake an idle loop."""
        if self._in_span:
            if not self._span_cut:
                self._span_cut = True
                self.process.interrupt()
        elif not self._wake.triggered:
            self._wake.succeed()

    # ----- one stage: steps inside this process ----------------------------------------------
    def _run_single(self):
        env, batcher = self.env, self.batcher
        while True:
            self._reserve()
            gamma = self.speculative.gamma_for(*batcher.decode_ready()) if self.speculative else 0
            plan = batcher.plan(gamma, self._verified)
            if plan is None:
                self._wake = env.event()
                yield self._wake
                continue
            span = batcher.decode_span(plan, self.max_span) if self.max_span > 1 else None
            if span is None:
                yield from self._step(plan)
            else:
                yield from self._span(span)

    def _program(self, batch: BatchShape, stage: int) -> StageProgram:
        """The stage's step as the network runs it (the cost model remembers what repeats)."""
        work = self.predictor.stage_work(batch, stage)
        network = self._net.network_s(work, stage)
        f = self.slowdown[stage]
        if f != 1.0:
            local = work.local
            work = replace(work, local=StepTime(local.compute_s * f, local.memory_s * f, local.network_s, local.fixed_s))
        return StageProgram(work, self.groups[stage], network)

    def _swap(self, plan: StepPlan):
        """The plan's KV swaps to and from host memory, before its forward pass (in network_s)."""
        if self.swap_s is None or not (plan.swap_out_blocks or plan.swap_in_blocks):
            return StepTime()
        took = self.swap_s(plan.swap_out_blocks, plan.swap_in_blocks)
        yield self.env.timeout(took)
        self.stage_busy_s[0] += took
        return StepTime(network_s=took)

    def _step(self, plan: StepPlan):
        env = self.env
        start = env.now
        self._busy_from = (start, self.stage_busy_s[0])
        total = yield from self._swap(plan)
        draft = self._draft_time(plan)
        if draft.total_s > 0:
            # drafting precedes verification (on these GPUs or handed to the draft's)
            yield env.timeout(draft.total_s)
            self.stage_busy_s[0] += draft.total_s
            total = total + draft
        t0 = env.now
        t = yield from self._stage(0, plan)
        self.stage_busy_s[0] += env.now - t0
        self._busy_from = None
        self._finish(plan, start, total + t, draft.total_s)

    def _finish(self, plan: StepPlan, start: float, total: StepTime, draft_s: float) -> None:
        self.steps += 1
        accepted = {w.request: self.accept(w.request, w.proposed) for w in plan.work if w.proposed and self.accept}
        self.cluster.on_step(self, plan, start, self.env.now - start, total, draft_s, accepted)
        self.cluster.on_tokens(self, self.batcher.complete(plan, accepted))

    def _span(self, span: DecodeSpan):
        """``span.steps`` steady decode steps as one event, exactly as stepping would time them:
        each step's parts from the cost model (vectorised over the span), boundaries by repeated
        addition. An arrival cuts the span at the step in progress."""
        env = self.env
        k = span.steps
        work = self.predictor.stage_work(span.batch(k), 0)
        network = self._net.network_s(work, 0)
        local = work.local
        # arrays over the span's steps (fixed may be one number)
        f = self.slowdown[0]
        compute: Any = local.compute_s if f == 1.0 else local.compute_s * f
        memory: Any = local.memory_s if f == 1.0 else local.memory_s * f
        fixed: Any = local.fixed_s
        duration = compute + memory + (0.0 + network) + fixed
        bounds = np.empty(k + 1)
        bounds[0] = env.now
        bounds[1:] = duration
        np.cumsum(bounds, out=bounds)
        self._in_span, self._span_cut = True, False
        self._span_bounds, self._span_seqs = bounds, span.plan.batch.num_seqs
        self._span_parts = (span, compute, memory, network, fixed, duration)
        self._busy_from = (float(bounds[0]), self.stage_busy_s[0])
        try:
            while True:
                try:
                    yield event_at(env, float(bounds[k]))
                    break
                except simpy.Interrupt as cut:
                    if cut.cause == HALT:
                        raise               # halt() applied the steps done by then
                    done = int(np.searchsorted(bounds, env.now, side="right")) - 1   # steps ended by now
                    k = min(k, max(done + 1, 1))
        finally:
            self._in_span = False
        self._apply_span(k)

    def _apply_span(self, k: int) -> None:
        """The first ``k`` steps of the span in progress happened: their rows, busy time,
        tokens and finished requests."""
        span, compute, memory, network, fixed, duration = self._span_parts
        bounds = self._span_bounds
        starts = bounds[:k]
        took = bounds[1:k + 1] - starts
        self.stage_busy_s[0] += float(took.sum())
        self._busy_from = None
        n = span.plan.batch.num_seqs
        waiting: Any = len(self.batcher.waiting)        # at the span's end; before it, as it began
        if waiting != span.waiting:
            waiting = np.full(k, span.waiting, dtype=np.int64)
            waiting[-1] = len(self.batcher.waiting)
        wait = took - duration[:k]
        np.maximum(wait, 0.0, out=wait)
        # the columns of steps.parquet after ``replica``, in schema order
        self.cluster.record_steps(
            self, k, np.arange(self.steps, self.steps + k), starts, took, n, 0, n, compute[:k], memory[:k], network,
            fixed[:k] if isinstance(fixed, np.ndarray) else fixed, wait, span.kv_blocks_used(k), waiting, 0, 0.0, 0, 0)
        self.steps += k
        last = self.batcher.advance_span(span, k)
        if self.cluster.checker is not None:
            self.cluster.check_steps(self, last, k)
        self.cluster.on_tokens(self, self.batcher.complete(last, {}))

    def span_tokens(self) -> int:
        """Output tokens the steps of a fast-forwarded span in progress have generated by now
        (0 outside a span): what stepping would already have counted."""
        if not self._in_span:
            return 0
        bounds = self._span_bounds
        # steps ended before now: a step ending exactly at an arrival counts after it, the
        # order stepping gives when the arrival was scheduled before that step began
        done = int(np.searchsorted(bounds, self.env.now, side="left")) - 1
        return self._span_seqs * min(max(done, 0), len(bounds) - 1)

    # ----- several stages: micro-batches in flight --------------------------------------------
    def run(self):
        env = self.env
        while True:
            self._reserve()
            while len(self.inflight) < self.pp:
                gamma = self.speculative.gamma_for(*self.batcher.decode_ready()) if self.speculative else 0
                plan = self.batcher.plan(gamma, self._verified)
                if plan is None:
                    break
                self.inflight.append(env.process(self._microbatch(plan)))
            if not self._wake.triggered:
                yield env.any_of([self._wake, *self.inflight]) if self.inflight else self._wake
            self._wake = env.event()
            self.inflight = [p for p in self.inflight if p.is_alive]

    def _stage(self, s: int, plan: StepPlan):
        """Occupy stage ``s`` for one micro-batch through the network's stage program; returns
        its StepTime. A prefill pool's replica tells its KV peer, which may stream the layers
        this stage computes as they are computed."""
        program = self._program(plan.batch, s)
        if self.kv is not None and plan.prefill_tokens:
            self.kv.prefill_step(self, s, plan, self.env.now, program.priced().total_s)
        return (yield from self.network.run_stage(program))

    def _draft_time(self, plan: StepPlan) -> StepTime:
        if self.speculative is None or self.speculative.draft is None:
            return StepTime()
        pre_ctx, pre_new, dec_ctx, gamma = [], [], [], 0
        for w in plan.work:
            if w.proposed:
                dec_ctx.append(w.context)
                gamma = max(gamma, w.proposed)
            else:
                pre_ctx.append(w.context)
                pre_new.append(w.new_tokens)
        return self.speculative.draft_time(pre_ctx, pre_new, dec_ctx, gamma)

    def _microbatch(self, plan: StepPlan):
        try:
            yield from self._microbatch_stages(plan)
        except simpy.Interrupt as stop:
            if stop.cause != HALT:
                raise

    def _microbatch_stages(self, plan: StepPlan):
        env = self.env
        start = env.now
        total = StepTime()
        nbytes = self.predictor.activation_bytes(plan.batch)
        draft = self._draft_time(plan)
        for s in range(self.pp):
            with self.stages[s].request() as req:
                yield req
                if s == 0:
                    start = env.now  # the step starts when its first stage does
                    total = total + (yield from self._swap(plan))
                    if draft.total_s > 0:
                        # drafting precedes verification (on these GPUs or handed to the draft's)
                        yield env.timeout(draft.total_s)
                        self.stage_busy_s[0] += draft.total_s
                        total = total + draft
                t0 = env.now
                t = yield env.process(self._stage(s, plan))
                self.stage_busy_s[s] += env.now - t0
                self.cluster.on_stage(self, s, t0, env.now, plan)
                total = total + t
            if s + 1 < self.pp:
                t0 = env.now
                sends = [self.network.transfer(a, b, nbytes) for a, b in zip(self.stage_gpus[s], self.stage_gpus[s + 1])]
                yield env.all_of(sends)
                total = total + StepTime(network_s=env.now - t0)
        self._finish(plan, start, total, draft.total_s)
        if not self._wake.triggered:
            self._wake.succeed()
