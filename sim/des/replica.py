"""A model replica as SimPy processes: its scheduler loop and the micro-batches in flight.

A replica is ``tp x pp`` GPUs. The GPUs of one pipeline stage work in lockstep on their
tensor-parallel shards, so one SimPy resource stands for a stage (a FIFO of capacity one:
one micro-batch at a time). Up to ``pp`` micro-batches are in flight, each made of requests
that are not in another micro-batch (a sequence's next token depends on its previous one).
With ``pp = 1`` this is plain iteration-level batching: one step at a time.

Per stage, under collective fidelity the stage's time is one timeout (its local work plus
its collectives priced by the alpha-beta schedule); under message fidelity the stage runs
layer by layer and every collective is simulated message by message on the links, so
replicas sharing links slow each other down. Stage-to-stage activations go through
``network.transfer`` either way.
"""
from __future__ import annotations

from typing import Callable, Sequence

import simpy

from sim.cost.placement import tp_groups
from sim.cost.step_time import StepTime, StepTimePredictor
from sim.policy.batching import ContinuousBatcher, StepPlan


class Replica:
    def __init__(self, env: simpy.Environment, index: int, predictor: StepTimePredictor,
                 batcher: ContinuousBatcher, network, stage_gpus: Sequence[Sequence[str]],
                 on_step: Callable, on_tokens: Callable, tp_cols: int = 1, speculative=None,
                 accept: Callable | None = None) -> None:
        self.env, self.index = env, index
        self.predictor, self.batcher, self.network = predictor, batcher, network
        self.stage_gpus = [tuple(g) for g in stage_gpus]
        self.stages = [simpy.Resource(env, capacity=1) for _ in self.stage_gpus]
        self.groups = [tp_groups(list(g), tp_cols) for g in self.stage_gpus]
        self.pp = len(self.stage_gpus)
        self.on_step, self.on_tokens = on_step, on_tokens
        self.speculative = speculative          # SpeculativeDecoder or None
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
        """Occupy stage ``s`` for one micro-batch; returns its StepTime."""
        work = self.predictor.stage_work(plan.batch, s)
        net = self.network
        if net.fidelity == "collective" or self.predictor.tp == 1:
            t = work.local + StepTime(network_s=self.predictor.network_s(work, s))
            yield self.env.timeout(t.total_s)
            return t
        groups = self.groups[s]
        per_layer_s = (work.local.total_s) / max(1, work.layers)
        start = self.env.now

        def issue(c):
            # every row (column) group of a 2-D grid communicates at once
            return self.env.all_of([net.collective(c.kind, ranks, c.nbytes) for ranks in groups[c.group]])

        for c in work.pre_collectives:
            yield issue(c)
        for _ in range(work.layers):
            yield self.env.timeout(per_layer_s)
            for c in work.per_layer_collectives:
                yield issue(c)
        for c in work.post_collectives:
            yield issue(c)
        network = self.env.now - start - work.local.total_s
        return work.local + StepTime(network_s=network)

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
        accepted = {w.request: self.accept(w.request, w.proposed) for w in plan.work if w.proposed}
        self.on_step(self, plan, start, env.now - start, total, draft.total_s, accepted)
        self.on_tokens(self, self.batcher.complete(plan, accepted))
        if not self._wake.triggered:
            self._wake.succeed()
