"""Run one simulation: the request source, the router and the replicas as SimPy processes.

Everything here is handed over wired by :func:`sim.build.build_simulation`; this module reads
no configuration. Events are scheduled per replica step (or per collective/message under
message fidelity), never per token; per-request state lives in the run's
:class:`~sim.policy.requests.RequestStore`. Requests whose prompt plus output can never fit in
one replica's KV cache (or exceed ``scheduler.max_model_len``) are rejected at arrival (status
``rejected``), as a serving engine rejects requests longer than it can hold.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import simpy
from simpy.core import EmptySchedule

from sim.des.invariants import InvariantChecker
from sim.errors import ConfigError
from sim.network.interface import Network
from sim.observe.metrics import RequestStats
from sim.observe.progress import Progress
from sim.observe.runtime import fewer_collections, return_free_memory
from sim.observe.recorder import ColumnRecorder
from sim.observe.tables import NAN, RequestLog, request_row
from sim.observe.timeline import Timeline
from sim.policy.batching import StepPlan
from sim.policy.requests import RequestStore
from sim.policy.routing import Router

from sim.des.disagg import KVHandoff, transfer_stats
from sim.des.autoscale import ReplicaLog
from sim.des.faults import FaultLog

if TYPE_CHECKING:
    from sim.cost.step_time import StepTime
    from sim.des.autoscale import Autoscaler
    from sim.des.faults import FaultInjector
    from sim.des.replica import Replica


class SimEnvironment(simpy.Environment):
    """SimPy's environment with a run loop that can be stopped between events (Ctrl-C,
    SIGTERM, ``sim.max_wall_s``) and counts the events it scheduled, with no per-event
    override. (Events at an exact time: :func:`sim.network.interface.event_at`.)"""

    #: events always pending that are no progress (the autoscaler's next evaluation, the next
    #: fault): when only they remain, requests still unfinished can never finish (a stall)
    background = 0

    @property
    def events_scheduled(self) -> int:
        """Events scheduled so far (SimPy numbers them in order)."""
        return int(repr(self._eid)[6:-1])

    def run_until(self, done: simpy.Event, stop: StopRequest) -> None:
        """Process events until ``done`` has been processed or ``stop`` is requested (then
        :class:`RunStopped` is raised between two events, the state consistent)."""
        step = self.step
        deadline = stop.deadline
        n = 0
        while done.callbacks is not None:
            if stop.reason is not None:
                raise RunStopped(stop.reason, stop.exit_code)
            n += 1
            if not n & 255:
                if deadline is not None and time.perf_counter() > deadline:
                    stop.request("wall", 3, f"sim.max_wall_s={stop.max_wall_s} reached")
                    continue
                if self.background and len(self._queue) <= self.background:
                    raise EmptySchedule()
            step()


class StopRequest:
    """Why a run should stop early; set from a signal handler or the wall-clock limit."""

    def __init__(self, max_wall_s: float | None = None) -> None:
        self.reason: str | None = None
        self.exit_code = 0
        self.message = ""
        self.max_wall_s: float | None = None
        self.deadline: float | None = None
        self.arm(max_wall_s)

    def arm(self, max_wall_s: float | None) -> None:
        """Stop ``max_wall_s`` wall-clock seconds from now (None: no limit)."""
        if max_wall_s is not None:
            self.max_wall_s, self.deadline = max_wall_s, time.perf_counter() + max_wall_s

    def request(self, reason: str, exit_code: int, message: str) -> None:
        if self.reason is None:
            self.reason, self.exit_code, self.message = reason, exit_code, message


class RunStopped(Exception):
    """The event loop stopped before the last request finished (see :class:`StopRequest`)."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


@dataclass
class SimResult:
    requests: pa.Table | Path       # requests.parquet: in memory, or where it was written
    step_sums: dict[str, float]     # column sums of steps.parquet (written as the run went)
    steps: int                      # its rows
    wall_s: float
    events: int
    sim_time_s: float
    gpus: int
    gpu_busy_s: float
    kv_capacity_tokens: int
    preemptions: int
    replica_busy_gpu_s: list[float] = field(default_factory=list)  # per replica: busy seconds x its GPUs
    complete: bool = True           # False: stopped early (see ``stop``)
    stop: StopRequest | None = None
    link_hops: int | None = None    # message fidelity: link traversals simulated
    request_stats: RequestStats | None = None   # what the summary needs of requests.parquet
    prefix_cache: dict[str, float] | None = None   # scheduler.prefix_caching: hits, lookups, evictions
    swap: dict[str, int] | None = None             # scheduler.preemption=swap: swaps out and in
    kv_transfer: dict[str, Any] | None = None      # disagg=pools: KV moved between the pools
    faults: FaultLog | None = None                 # faults=mtbf: faults.parquet's rows and their cost
    lifecycle: ReplicaLog | None = None            # autoscale or faults: replicas.parquet's rows, seconds alive


@dataclass(frozen=True)
class Arrivals:
    """The trace the source replays, in arrival order."""

    arrival_s: np.ndarray     # float64
    prompt: np.ndarray        # int32 tokens (int64 if a count needs it)
    output: np.ndarray
    priority: np.ndarray | None = None   # int32, lower first (None: all 0)

    @classmethod
    def of(cls, arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray,
           priority: np.ndarray | None = None) -> "Arrivals":
        """The trace with its token counts held as int32 when every count fits (16 bytes a
        request instead of 24 for the whole run), as given otherwise."""
        def narrow(tokens: np.ndarray) -> np.ndarray:
            small = len(tokens) == 0 or int(tokens.max()) <= np.iinfo(np.int32).max
            return tokens.astype(np.int32) if small else tokens
        return cls(np.asarray(arrival_s, dtype=np.float64), narrow(prompt), narrow(output),
                   None if priority is None else np.asarray(priority).astype(np.int32))

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass(frozen=True)
class Admission:
    """Which arrivals a replica can ever serve: prompt + output - 1 cached positions within
    the smallest replica's KV capacity (the last output token is never written to the cache),
    and prompt + output within the context limit (None: no limit); disaggregated, the decode
    replicas' capacity, and the prompt within the prefill replicas'."""

    capacity_tokens: int
    context_limit: int | None
    max_tokens_per_step: int
    prefill_capacity_tokens: int | None = None   # disagg=pools: the smallest prefill replica's (holds the prompt)

    def admits(self, prompt: int, output: int) -> bool:
        return prompt + output - 1 <= self.capacity_tokens and (
            self.context_limit is None or prompt + output <= self.context_limit) and (
            self.prefill_capacity_tokens is None or prompt <= self.prefill_capacity_tokens)


class Cluster:
    """The run's shared state and the callbacks through which replicas report their steps.

    Built by :func:`sim.build.build_simulation`; ``replicas`` is filled in by the builder
    after the replicas (which report back here) exist.
    """

    def __init__(self, env: SimEnvironment, arrivals: Arrivals, requests: RequestStore, log: RequestLog,
                 router: Router, steps: ColumnRecorder, progress: Progress, admission: Admission, gpus: int) -> None:
        self.env, self.arrivals, self.requests, self.log = env, arrivals, requests, log
        self.router, self.steps = router, steps
        self.progress, self.admission, self.gpus = progress, admission, gpus
        self.replicas: list[Replica] = []
        self.finished = 0
        self.arrived = 0                      # requests the source has taken from the trace
        self.all_done = env.event()
        self.network: Network | None = None   # set by the builder
        self.checker: InvariantChecker | None = None   # debug.check_invariants (set by the builder)
        self.timeline: Timeline | None = None          # output.timeline (set by the builder)
        self.kv: KVHandoff | None = None               # disagg=pools (set by the builder)
        self.faults: FaultInjector | None = None       # faults=mtbf (set by the builder)
        self.scaler: Autoscaler | None = None          # autoscale (set by the builder)
        self.lifecycle: ReplicaLog | None = None       # replicas' states (autoscale or faults; set by the builder)
        #: the engine's per-request front-end time (engine.request_overhead_us): a request
        #: reaches the scheduler this long after it arrives; its TTFT counts from its arrival
        self.frontend_s = 0.0
        #: faults: requests in flight on a replica that went down recompute elsewhere
        #: ("restart", at most ``max_restarts`` times) or fail ("fail")
        self.recovery, self.max_restarts = "restart", 0
        self.orphans: deque[int] = deque()    # requests waiting while every replica is down

    def link_hops(self) -> int | None:
        """Link traversals the network simulated (message fidelity), or None."""
        return None if self.network is None else self.network.link_hops

    # ----- callbacks from the replicas --------------------------------------------------------
    def finish_one(self) -> None:
        self.finished += 1
        self.progress.done = self.finished
        self.progress.tick()
        if self.finished == len(self.arrivals) and not self.all_done.triggered:
            self.all_done.succeed()

    def log_request(self, slot: int, status: str, finish_s: float = float("nan")) -> None:
        """Write the row of the request in ``slot`` and free the slot."""
        req = self.requests
        self.log_row(request_row(req.request_id[slot], req.arrival_s[slot], req.prompt[slot], req.output[slot],
                                 req.replica[slot], status, req.scheduled_s[slot], req.first_token_s[slot], finish_s,
                                 req.preemptions[slot], req.decode_passes[slot], req.cached[slot], req.priority[slot],
                                 req.restarts[slot]))
        req.release(slot)

    def log_row(self, row: tuple) -> None:
        self.log.log(row)
        if self.timeline is not None:
            self.timeline.request(row, self.env.now)

    def on_step(self, replica: Replica, plan: StepPlan, start: float, duration: float, parts: StepTime,
                draft_s: float, accepted: dict[int, int]) -> None:
        """One finished step (micro-batch) of ``replica``: a row of ``steps.parquet``."""
        if self.checker is not None:
            self.check_steps(replica, plan, 1)
        if plan.prefill_tokens:
            scheduled = self.requests.scheduled_s
            for w in plan.work:
                if scheduled[w.request] != scheduled[w.request]:   # NaN: its first step
                    scheduled[w.request] = start
        row = (replica.index, replica.steps - 1, start, duration, plan.batch.num_seqs,
               plan.prefill_tokens, plan.decode_tokens, parts.compute_s, parts.memory_s,
               parts.network_s, parts.fixed_s, max(0.0, duration - parts.total_s),
               replica.batcher.pool.used_blocks, len(replica.batcher.waiting), len(plan.preempted),
               draft_s, sum(w.proposed for w in plan.work), sum(accepted.values()))
        self.steps.append(*row)
        if self.timeline is not None:
            self.timeline.step(*row)

    def on_stage(self, replica: Replica, stage: int, start: float, end: float, plan: StepPlan) -> None:
        """A micro-batch held pipeline stage ``stage`` of ``replica`` from ``start`` to ``end``."""
        if self.timeline is not None:
            self.timeline.stage(replica.index, stage, start, end, plan.batch.num_seqs)

    def check_steps(self, replica: Replica, plan: StepPlan, steps: int) -> None:
        """Invariants after ``steps`` steps of ``plan`` (a step, or a span's last step)."""
        assert self.checker is not None
        self.checker.on_step(replica, plan, steps)
        for w in plan.work:
            self.checker.on_admit(replica, self.requests.request_id[w.request],   # its first step: FIFO
                                  self.requests.priority[w.request])

    def record_steps(self, replica: Replica, rows: int, *values: Any) -> None:
        """``rows`` rows of ``steps.parquet`` for a fast-forwarded span: the columns after
        ``replica`` in schema order, each an array of ``rows`` values or one value repeated."""
        self.steps.extend(rows, replica.index, *values)
        if self.timeline is not None:
            self.timeline.steps(rows, replica.index, *values)

    def on_tokens(self, replica: Replica, events: list[tuple[int, bool, bool]]) -> None:
        """Stamp first and last tokens of the requests a step sampled (a prefill pool's
        first tokens: hand the request to the decode pool)."""
        now, req, kv = self.env.now, self.requests, self.kv
        prefill = kv is not None and replica.batcher.hands_off
        for r, is_first, finished in events:
            if prefill and not finished:
                kv.prefilled(replica, r)            # type: ignore[union-attr]
                continue
            if is_first:
                req.first_token_s[r] = now
                if self.scaler is not None:
                    self.scaler.first_token(now - req.arrival_s[r])
            if finished:
                if prefill:
                    kv.finished_at_prefill(replica, r)   # type: ignore[union-attr]
                elif kv is not None:
                    kv.decode_router.done(replica.index - len(kv.prefill), req.prompt[r], req.output[r])
                else:
                    self.router.done(replica.index, req.prompt[r], req.output[r])
                    if self.lifecycle is not None and self.lifecycle.state[replica.index] == "draining":
                        self.drained_if_empty(replica.index)
                self.log_request(r, "completed", now)
                self.finish_one()

    def kv_arrived(self, slot: int) -> None:
        """Disaggregated serving: ``slot``'s KV and first token are at its decode replica."""
        self.requests.first_token_s[slot] = self.env.now
        self.replicas[self.requests.replica[slot]].receive_kv(slot)

    # ----- the request source -----------------------------------------------------------------
    def source(self):
        """Arrivals in trace order: reject what no replica can hold, route the rest."""
        env, req = self.env, self.requests
        arrival, prompt, output = self.arrivals.arrival_s, self.arrivals.prompt, self.arrivals.output
        priority = self.arrivals.priority
        frontend = self.frontend_s
        for r in range(len(self.arrivals)):
            delay = arrival[r] + frontend - env.now
            if delay > 0:
                yield env.timeout(delay)
            self.arrived = r + 1
            p, o = int(prompt[r]), int(output[r])
            if not self.admission.admits(p, o):
                self.log_row(request_row(r, arrival[r], p, o, -1, "rejected", NAN, NAN, NAN, 0, 0, 0,
                                         0 if priority is None else int(priority[r])))
                self.finish_one()
                continue
            slot = req.admit(r, arrival[r], p, o)
            if priority is not None:
                req.priority[slot] = int(priority[r])
            if self.kv is not None:
                self.kv.arrive(slot)
                continue
            self.route(slot)

    def route(self, slot: int) -> None:
        """Send the request in ``slot`` to the replica the router picks (tokens it generated
        before a restart count there), or hold it while every replica is down."""
        router, req = self.router, self.requests
        if not router.any_up:
            self.orphans.append(slot)
            return
        p = req.prompt[slot]
        k = router.pick(p, req.output[slot], self.span_tokens,
                        self.cached_prefix_tokens(req.request_id[slot], p) if router.needs_cached else ())
        req.replica[slot] = k
        if req.generated[slot]:
            router.generated[k] += req.generated[slot]
        self.replicas[k].submit(slot)

    # ----- faults -------------------------------------------------------------------------------
    def take_down(self, replicas: Sequence[int]) -> tuple[int, int]:
        """A fault stops ``replicas``: their requests lose their KV and, in request order,
        recompute on a replica that is up (or wait for one) or fail. Returns (restarted, failed)."""
        req, router = self.requests, self.router
        held = []
        for k in replicas:
            router.down.add(k)
            if self.lifecycle is not None:
                self.lifecycle.set(self.env.now, k, "down", "fault", self.serving())
            for slot in self.replicas[k].halt():
                router.done(k, req.prompt[slot], req.output[slot])
                held.append(slot)
        held.sort(key=req.request_id.__getitem__)
        restarted = failed = 0
        for slot in held:
            if self.recovery == "fail" or req.restarts[slot] >= self.max_restarts:
                self.log_request(slot, "failed")
                self.finish_one()
                failed += 1
            else:
                req.restarts[slot] += 1
                req.computed[slot] = 0
                if self.checker is not None:
                    self.checker.on_restart(req.request_id[slot])
                self.route(slot)
                restarted += 1
        return restarted, failed

    def bring_up(self, replica: int) -> None:
        """``replica`` is repaired: it serves again if it is still wanted (the autoscaler may
        have let it go meanwhile: then it is off)."""
        rep = self.replicas[replica]
        rep.resume()
        if rep.wanted:
            self.serve(replica, "repaired")
        elif self.lifecycle is not None:
            rep.power_off()
            self.lifecycle.set(self.env.now, replica, "off", "repaired", self.serving())

    def serving(self) -> int:
        """Replicas the router may pick now."""
        return len(self.replicas) - len(self.router.down)

    def powered(self, replica: int) -> bool:
        """Whether ``replica`` runs at all (the autoscaler has not turned it off)."""
        return self.lifecycle is None or self.lifecycle.state[replica] != "off"

    def serve(self, replica: int, reason: str) -> None:
        """``replica`` takes requests from now; requests held while every replica was down go out."""
        self.router.down.discard(replica)
        if self.lifecycle is not None:
            self.lifecycle.set(self.env.now, replica, "serving", reason, self.serving())
        while self.orphans:
            self.route(self.orphans.popleft())

    def drained_if_empty(self, replica: int) -> None:
        """A draining ``replica`` with no request left is off."""
        assert self.lifecycle is not None
        if self.router.in_flight[replica] == 0:
            self.replicas[replica].power_off()
            self.lifecycle.set(self.env.now, replica, "off", "drained", self.serving())

    def span_tokens(self, replica: int) -> int:
        """Output tokens replica ``replica``'s fast-forwarded span has generated by now."""
        return self.replicas[replica].span_tokens()

    def cached_prefix_tokens(self, request: int, prompt: int) -> list[int]:
        """Per replica, tokens of request ``request``'s prompt its prefix cache holds now."""
        out = []
        for rep in self.replicas if self.kv is None else self.kv.prefill:
            batcher, pool = rep.batcher, rep.batcher.pool
            ids = batcher.prefix_ids
            out.append(len(pool.cached_prefix(ids[request], prompt)) * (pool.unit_tokens or 0) if ids is not None else 0)
        return out

    def log_unfinished(self) -> None:
        """Rows for the requests a stopped run left: those in flight, then those not yet arrived."""
        self.orphans.clear()
        for slot in self.requests.occupied():
            self.log_request(slot, "unfinished")
        a = self.arrivals
        self.log.log_unarrived(a.arrival_s, a.prompt, a.output, a.priority)


def simulate(cluster: Cluster, stop: StopRequest | None = None) -> SimResult:
    """Run ``cluster`` until every request has finished or been rejected, or until ``stop``
    is requested (then the result says ``complete=False`` and unfinished requests are marked
    so). The steps recorder is closed either way: its file is complete and readable."""
    return_free_memory()
    wall0 = time.perf_counter()
    stop = stop or StopRequest()
    env = cluster.env
    n = len(cluster.arrivals)
    env.process(cluster.source())
    if n == 0:
        cluster.all_done.succeed()
    complete = True
    try:
        with fewer_collections():
            env.run_until(cluster.all_done, stop)
    except RunStopped:
        complete = False
    except BaseException as exc:
        if cluster.timeline is not None:
            cluster.timeline.discard()
        if not isinstance(exc, EmptySchedule):
            raise
        cluster.steps.close()
        if cluster.kv is not None:
            cluster.kv.transfers.close()
        cluster.log.discard()
        raise ConfigError(f"simulation stalled with {n - cluster.finished} of {n} requests unfinished: the "
                          f"scheduler could not place them (KV cache of {cluster.admission.capacity_tokens} "
                          f"tokens per replica, scheduler.max_tokens_per_step="
                          f"{cluster.admission.max_tokens_per_step})") from None
    cluster.progress.close()
    cluster.steps.close()
    if cluster.kv is not None:
        cluster.kv.transfers.close()
    if not complete:
        cluster.log_unfinished()
    requests = cluster.log.close()
    if cluster.timeline is not None:
        cluster.timeline.close()
    wall = time.perf_counter() - wall0
    busy = [sum(r.stage_busy_s) * r.predictor.tp for r in cluster.replicas]
    result = SimResult(requests, dict(cluster.steps.sums), cluster.steps.rows, wall, env.events_scheduled,
                     float(env.now), cluster.gpus, sum(busy), cluster.admission.capacity_tokens,
                     int(sum(r.batcher.preemptions for r in cluster.replicas)), busy, complete, stop,
                     cluster.link_hops(), cluster.log.stats, prefix_cache_stats(cluster), swap_stats(cluster),
                     None if cluster.kv is None else transfer_stats(cluster.kv),
                     None if cluster.faults is None else cluster.faults.close(float(env.now)),
                     cluster.lifecycle)
    if cluster.lifecycle is not None:
        cluster.lifecycle.close(float(env.now))
    return result


def swap_stats(cluster: Cluster) -> dict[str, int] | None:
    """Preemptions by swapping (None unless scheduler.preemption=swap): swapped out to host
    memory, swapped back in, and the host blocks available per replica (the rest recomputed)."""
    batchers = [r.batcher for r in cluster.replicas if r.batcher.config.preemption == "swap"]
    if not batchers:
        return None
    return {"swapped_out": sum(b.swap_outs for b in batchers), "swapped_in": sum(b.swap_ins for b in batchers),
            "recomputed": sum(b.preemptions for b in batchers) - sum(b.swap_outs for b in batchers),
            "host_blocks_per_replica": min(b.host_blocks for b in batchers)}


def prefix_cache_stats(cluster: Cluster) -> dict[str, float] | None:
    """The replicas' prefix caches together (None without prefix caching): prompt tokens looked
    up at admissions (re-admissions after preemption included, as vLLM counts queries), of which
    found cached, the hit rate, units evicted, units cached at the end."""
    pools = [r.batcher.pool for r in cluster.replicas if r.batcher.pool.unit_tokens]
    if not pools:
        return None
    looked = sum(p.lookup_tokens for p in pools)
    hits = sum(p.hit_tokens for p in pools)
    return {"hit_rate": hits / looked if looked else 0.0, "hit_tokens": hits, "lookup_tokens": looked,
            "evictions": sum(p.evictions for p in pools), "cached_units_at_end": sum(p.cached_units for p in pools),
            "unit_tokens": pools[0].unit_tokens or 0}
