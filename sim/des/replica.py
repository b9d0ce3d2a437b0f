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
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import simpy

from sim.cost.placement import tp_groups
from sim.cost.step_time import StepPredictor, StepTime
from sim.network.interface import Network, StageProgram
from sim.policy.batching import ContinuousBatcher, StepPlan
from sim.policy.speculative import Speculation

if TYPE_CHECKING:
    from sim.des.simulation import Cluster


class Replica:
    def __init__(self, env: simpy.Environment, index: int, predictor: StepPredictor,
                 batcher: ContinuousBatcher, network: Network, stage_gpus: Sequence[Sequence[str]],
                 cluster: Cluster, tp_cols: int = 1, speculative: Speculation | None = None,
                 accept: Callable[[int, int], int] | None = None) -> None:
        self.env, self.index = env, index
        self.predictor, self.batcher, self.network = predictor, batcher, network
        self.stage_gpus = [tuple(g) for g in stage_gpus]
        self.stages = [simpy.Resource(env, capacity=1) for _ in self.stage_gpus]
        self.groups = [tp_groups(list(g), tp_cols) for g in self.stage_gpus]
        self.pp = len(self.stage_gpus)
        self.cluster = cluster
        self.speculative = speculative          # a SpeculativeDecoder, or None
        self.accept = accept                    # (request, proposed) -> accepted drafts
        self.inflight: list[simpy.Process] = []
        self._wake = env.event()
        self.steps = 0
        self.stage_busy_s = [0.0] * self.pp
        self.process = env.process(self.run())

    def submit(self, request: int) -> None:
        self.batcher.add(request)
        if not self._wake.triggered:
            self._wake.succeed()

    def run(self):
        env = self.env
        while True:
            while len(self.inflight) < self.pp:
                gamma = self.speculative.gamma_for(*self.batcher.decode_ready()) if self.speculative else 0
                plan = self.batcher.plan(gamma)
                if plan is None:
                    break
                self.inflight.append(env.process(self._microbatch(plan)))
            if not self._wake.triggered:
                yield env.any_of([self._wake, *self.inflight]) if self.inflight else self._wake
            self._wake = env.event()
            self.inflight = [p for p in self.inflight if p.is_alive]

    def _stage(self, s: int, plan: StepPlan):
        """Occupy stage ``s`` for one micro-batch through the network's stage program; returns its StepTime."""
        work = self.predictor.stage_work(plan.batch, s)
        program = StageProgram(work, self.groups[s], self.predictor.network_s(work, s))
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
                    if draft.total_s > 0:
                        # drafting precedes verification (on these GPUs or handed to the draft's)
                        yield env.timeout(draft.total_s)
                        self.stage_busy_s[0] += draft.total_s
                        total = total + draft
                t0 = env.now
                t = yield env.process(self._stage(s, plan))
                self.stage_busy_s[s] += env.now - t0
                total = total + t
            if s + 1 < self.pp:
                t0 = env.now
                sends = [self.network.transfer(a, b, nbytes) for a, b in zip(self.stage_gpus[s], self.stage_gpus[s + 1])]
                yield env.all_of(sends)
                total = total + StepTime(network_s=env.now - t0)
        self.steps += 1
        accepted = {w.request: self.accept(w.request, w.proposed) for w in plan.work if w.proposed and self.accept}
        self.cluster.on_step(self, plan, start, env.now - start, total, draft.total_s, accepted)
        self.cluster.on_tokens(self, self.batcher.complete(plan, accepted))
        if not self._wake.triggered:
            self._wake.succeed()
