"""Run-time invariants (``debug.check_invariants=true``; on in the conservation and property
tests). Each is checked where the state it constrains changes; a violation stops the run
with one line naming the invariant, the request or step, and the simulated time.

* **Once**: every request is logged exactly once (completed, rejected or unfinished).
* **Monotonic times**: arrival <= first scheduled <= first token <= finish for every completed
  request; no collective ends before it begins.
* **KV conservation**: after every step, each replica's free blocks plus the blocks held by
  its requests plus those of the cached prefixes some request references equal its pool (an
  evictable prefix's blocks count as free, so a block is reclaimed only when no request
  references it), and no request holds fewer blocks than its cached positions need.
* **Budgets**: no step holds more sequences than ``scheduler.max_batch_size`` or more new
  tokens than ``scheduler.max_tokens_per_step`` (but for a whole prompt longer than the budget,
  which runs alone when prefill is not chunked).
* **FIFO admission**: within a priority class, a replica admits requests it has never run in
  the order they were queued at it (arrival order, or with disaggregated layerwise transfers
  the order the decode pool reserved their blocks). A request restarted after a fault is
  exempt from then on: it joins its new replica's queue where the policy places it.
* **Link FIFO** (message fidelity): every hop reserves its link from the later of now and the
  end of the link's previous reservation: no overlap, no overtaking, no idle link while a
  message waits for it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sim.errors import InvariantViolation

if TYPE_CHECKING:
    from sim.config.schema import SchedulerConfig
    from sim.des.replica import Replica
    from sim.policy.batching import StepPlan


class InvariantChecker:
    """The checks; the cluster calls them when enabled (None otherwise: no cost)."""

    def __init__(self, env, scheduler: SchedulerConfig) -> None:
        self.env, self.scheduler = env, scheduler
        self.logged: set[int] = set()
        self.last_admitted: dict[tuple[int, int], int] = {}   # (replica, priority) -> its last first admission
        self.admitted: set[int] = set()
        self.routed: dict[int, int] = {}      # request -> its place in the order requests were queued at replicas
        self.link_free_at: dict[tuple[str, str], float] = {}   # message fidelity: when each link is next free

    def fail(self, invariant: str, detail: str) -> None:
        raise InvariantViolation(f"invariant '{invariant}' violated: {detail} at t={self.env.now:.6f} s simulated")

    def on_row(self, row: tuple) -> None:
        rid, arrival, status, scheduled, first, finish = row[0], row[1], row[5], row[6], row[7], row[8]
        if rid in self.logged:
            self.fail("once", f"request {rid} logged twice (status {status})")
        self.logged.add(rid)
        if status == "completed" and not (arrival <= scheduled <= first <= finish):
            self.fail("monotonic times", f"request {rid}: arrival {arrival}, scheduled {scheduled}, first token "
                                         f"{first}, finish {finish}")
        if status == "completed" and (math.isnan(first) or math.isnan(finish)):
            self.fail("monotonic times", f"request {rid} completed without a first or last token time")

    def on_step(self, replica: Replica, plan: StepPlan, steps: int = 1) -> None:
        cfg = self.scheduler
        b = plan.batch
        where = f"replica {replica.index} step {replica.steps - steps}"
        if b.num_seqs > cfg.max_batch_size:
            self.fail("budgets", f"{where} holds {b.num_seqs} sequences > scheduler.max_batch_size={cfg.max_batch_size}")
        alone = b.num_seqs == 1 and not cfg.chunked_prefill    # an unchunked prompt over budget runs alone
        if plan.prefill_tokens + plan.decode_tokens > cfg.max_tokens_per_step and not alone:
            self.fail("budgets", f"{where} computes {plan.prefill_tokens + plan.decode_tokens} tokens > "
                                 f"scheduler.max_tokens_per_step={cfg.max_tokens_per_step}")
        pool = replica.batcher.pool
        held = sum(pool.held.values())
        shared = pool.referenced_blocks()
        if (pool.free_blocks + held + shared != pool.total_blocks or pool.free_blocks < 0
                or min(pool.held.values(), default=0) < 0 or pool.evictable_blocks > pool.free_blocks):
            self.fail("KV conservation", f"{where}: {pool.free_blocks} free + {held} held + {shared} in referenced "
                                         f"cached prefixes != {pool.total_blocks} blocks")
        batcher = replica.batcher
        if batcher.host_free < 0 or batcher.host_free + sum(batcher.swapped.values()) != batcher.host_blocks:
            self.fail("KV conservation", f"{where}: {batcher.host_free} free host blocks + "
                                         f"{sum(batcher.swapped.values())} swapped != {batcher.host_blocks}")
        computed = replica.batcher.computed
        for r in replica.batcher.running:
            if pool.blocks_held(r) < pool.blocks_for(computed[r]):
                self.fail("KV conservation", f"{where}: a request holds {pool.blocks_held(r)} blocks for "
                                             f"{computed[r]} cached positions")

    def hop(self, link: tuple[str, str], start_s: float, end_s: float, nbytes: float) -> None:
        """Link queues are FIFO: a message reserves a link from the later of now and the end of
        the reservation before it (no overlap, no overtaking, no idle link while one waits)."""
        now = self.env.now
        free_at = self.link_free_at.get(link, 0.0)
        if start_s != max(now, free_at) or end_s < start_s:
            self.fail("link FIFO", f"link {link[0]} -> {link[1]}: a {nbytes:.0f}-byte message reserved "
                                   f"[{start_s}, {end_s}] s, the link is free from {max(now, free_at)} s")
        self.link_free_at[link] = end_s

    def collective(self, kind: str, ranks, nbytes: float, start_s: float, end_s: float) -> None:
        if end_s < start_s:
            self.fail("monotonic times", f"{kind} over {len(ranks)} ranks ended at {end_s} before it began at {start_s}")

    def on_route(self, request_id: int) -> None:
        """``request_id`` joins a replica's queue (the first time: its place in the order)."""
        self.routed.setdefault(request_id, len(self.routed))

    def on_restart(self, request_id: int) -> None:
        """A fault sent ``request_id`` to another replica: no FIFO place to keep from now on."""
        self.admitted.add(request_id)

    def on_admit(self, replica: Replica, request_id: int, priority: int = 0) -> None:
        """``request_id`` (of ``priority``) enters ``replica``'s batch for the first time."""
        if request_id in self.admitted:
            return
        self.admitted.add(request_id)
        key = (replica.index, priority)
        order = self.routed.get(request_id, request_id)
        last = self.last_admitted.get(key, -1)
        if order < last:
            self.fail("FIFO admission", f"replica {replica.index} admitted request {request_id} before a request "
                                        f"queued there earlier (priority {priority})")
        self.last_admitted[key] = order
