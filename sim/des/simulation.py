"""Run one simulation: request source, router and replicas as SimPy processes.

Events are scheduled per replica step (or per collective/message under message fidelity),
never per token; per-request state lives in arrays. Requests whose prompt plus output can
never fit in one replica's KV cache are rejected at arrival (status ``rejected``), as a
serving engine rejects requests longer than it can hold.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import simpy

import workloads
from sim.build import ClusterPlan, make_network
from sim.config.schema import RunConfig
from sim.des.replica import Replica
from sim.errors import ConfigError
from sim.observe import schemas
from sim.observe.recorder import ColumnRecorder
from sim.policy.batching import ContinuousBatcher
from sim.policy.kv_cache import KVBlockPool
from sim.policy.routing import Router
from sim.policy.speculative import request_acceptance, sample_accepted


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts scheduled events (for ``sim.events``)."""

    def __init__(self) -> None:
        super().__init__()
        self.events_scheduled = 0

    def schedule(self, event, priority=1, delay=0):  # noqa: D401 - SimPy API
        self.events_scheduled += 1
        super().schedule(event, priority, delay)


@dataclass
class SimResult:
    requests: pa.Table
    steps: pa.Table
    wall_s: float
    events: int
    sim_time_s: float
    gpus: int
    gpu_busy_s: float
    kv_capacity_tokens: int
    preemptions: int
    replica_busy_gpu_s: list[float] = field(default_factory=list)  # per replica: busy seconds x its GPUs


class _Progress:
    """Simulated time against the trace's end, on a terminal only (``output.progress``)."""

    def __init__(self, env, end_s: float, mode: str, total: int) -> None:
        self.enabled = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.env, self.end_s, self.total, self.done = env, max(end_s, 1e-9), total, 0
        self.last = 0.0

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last > 0.5):
            self.last = now
            frac = min(1.0, self.env.now / self.end_s)
            sys.stderr.write(f"\r[sim] {frac:6.1%} of trace ({self.env.now:9.1f}/{self.end_s:.1f} s simulated), "
                             f"{self.done}/{self.total} requests done")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.tick(force=True)
            sys.stderr.write("\n")


def simulate(cfg: RunConfig, plan: ClusterPlan, table: workloads.RequestTable) -> SimResult:
    wall0 = time.perf_counter()
    env = CountingEnvironment()
    network = make_network(cfg.network.fidelity, env, plan.fabric)
    n = len(table)
    arrival = np.asarray(table.arrival_s, dtype=np.float64)
    prompt = np.asarray(table.prompt_tokens, dtype=np.int64)
    output = np.asarray(table.output_tokens, dtype=np.int64)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    where = np.full(n, -1, dtype=np.int32)
    rejected = np.zeros(n, dtype=bool)
    preempt_count = np.zeros(n, dtype=np.int32)
    passes = np.zeros(n, dtype=np.int32)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5bec]))  # "spec" stream
    acceptance = request_acceptance(rng, cfg.speculative, n)

    def accept(request: int, proposed: int) -> int:
        return sample_accepted(rng, float(acceptance[request]), proposed)
    steps = ColumnRecorder(schemas.STEPS)
    router = Router(cfg.parallel.router, len(plan.replicas))
    all_done = env.event()
    state = {"finished": 0}
    progress = _Progress(env, float(arrival[-1]) if n else 0.0, cfg.output.progress, n)

    def finish_one() -> None:
        state["finished"] += 1
        progress.done = state["finished"]
        progress.tick()
        if state["finished"] == n and not all_done.triggered:
            all_done.succeed()

    def on_step(replica: Replica, step_plan, start: float, duration: float, parts, draft_s: float,
                accepted: dict[int, int]) -> None:
        for v in step_plan.preempted:
            preempt_count[v] += 1
        for w in step_plan.work:
            if w.samples and (w.proposed or replica.batcher.generated.get(w.request, 0) >= 1):
                passes[w.request] += 1
        steps.append(replica.index, replica.steps - 1, start, duration, step_plan.batch.num_seqs,
                     step_plan.prefill_tokens, step_plan.decode_tokens, parts.compute_s, parts.memory_s,
                     parts.network_s, parts.fixed_s, max(0.0, duration - parts.total_s),
                     replica.batcher.pool.used_blocks,
                     len(replica.batcher.waiting), len(step_plan.preempted), draft_s,
                     sum(w.proposed for w in step_plan.work), sum(accepted.values()))

    def on_tokens(replica: Replica, events) -> None:
        now = env.now
        for r, is_first, finished in events:
            if is_first:
                first[r] = now
            if finished:
                finish[r] = now
                router.done(replica.index, int(prompt[r] + output[r]))
                finish_one()

    replicas = []
    for i, rp in enumerate(plan.replicas):
        pool = KVBlockPool(rp.capacity.tokens // cfg.scheduler.block_size, cfg.scheduler.block_size)
        batcher = ContinuousBatcher(cfg.scheduler, pool, prompt, output)
        replicas.append(Replica(env, i, rp.predictor, batcher, network, rp.stage_gpus, on_step, on_tokens,
                                cfg.parallel.tp_cols, rp.speculative if cfg.speculative.enabled else None, accept))
    capacity = min(rp.capacity.tokens for rp in plan.replicas)
    limit = cfg.scheduler.context_limit(cfg.model.max_position_embeddings)

    def source():
        for r in range(n):
            delay = arrival[r] - env.now
            if delay > 0:
                yield env.timeout(delay)
            # the last output token is never written to the cache: P + O - 1 positions
            if prompt[r] + output[r] - 1 > capacity or (limit is not None and prompt[r] + output[r] > limit):
                rejected[r] = True
                finish_one()
                continue
            k = router.pick(int(prompt[r] + output[r]))
            where[r] = k
            replicas[k].submit(r)

    env.process(source())
    if n == 0:
        all_done.succeed()
    try:
        env.run(until=all_done)
    except RuntimeError as exc:
        if "No scheduled events left" not in str(exc):
            raise
        raise ConfigError(f"simulation stalled with {n - state['finished']} of {n} requests unfinished: the "
                          f"scheduler could not place them (KV cache of {capacity} tokens per replica, "
                          f"scheduler.max_tokens_per_step={cfg.scheduler.max_tokens_per_step})") from None
    progress.close()
    wall = time.perf_counter() - wall0

    completed = ~rejected
    out = np.where(output > 1, output - 1, np.nan)
    requests = pa.Table.from_pydict({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": arrival,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "replica": where,
        "status": np.where(completed, "completed", "rejected"),
        "first_token_s": first,
        "finish_s": finish,
        "ttft_s": first - arrival,
        "tpot_s": (finish - first) / out,
        "e2e_s": finish - arrival,
        "preemptions": preempt_count,
        "decode_passes": passes,
        "tokens_per_pass": np.where(passes > 0, (output - 1) / np.maximum(passes, 1), np.nan),
    }, schema=schemas.REQUESTS)
    busy = [sum(r.stage_busy_s) * rp.predictor.tp for r, rp in zip(replicas, plan.replicas)]
    return SimResult(requests, steps.table(), wall, env.events_scheduled, env.now, plan.gpus,
                     sum(busy), capacity, int(sum(r.batcher.preemptions for r in replicas)), busy)
