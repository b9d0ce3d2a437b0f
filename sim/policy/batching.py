"""Iteration-level continuous batching for one replica (a pure policy: no SimPy, no I/O).

Each request has a prompt of ``P`` tokens and must generate ``O`` tokens. The policy advances
``computed`` (positions whose KV is cached) and ``generated`` tokens in the run's
:class:`~sim.policy.requests.RequestStore`; the tokens a request
still has to feed through the model are ``P + generated - computed``. A step that feeds a
request's last pending token samples one new token (``generated += 1``); the first such
sample is the first token (TTFT), and the request finishes when ``generated == O``.

Per step (vLLM v1 style): running requests first, oldest first (``policy=priority``: most
urgent first, then oldest), each taking one decode
token or its next prompt chunk from the step's token budget (``max_tokens_per_step``); then
waiting requests are admitted in arrival order (``policy=priority``: by priority, then arrival) while the batch has room
(``max_batch_size``), the budget lasts and the KV cache has the blocks. Without chunked
prefill a prompt is admitted only whole (one that exceeds the budget runs alone). When a
running request cannot get a KV block, the most recently admitted running request
(``policy=priority``: the lowest priority, latest arrival, possibly itself) is preempted: its blocks are freed and it returns to the head of the queue to be recomputed
(its generated tokens are kept and become part of the recomputed prefix).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sim.errors import require
from sim.policy.kv_cache import KVBlockPool
from sim.policy.requests import RequestStore
from sim.spec.batch import ATTENTION_QUERY_BLOCK, BatchShape


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "fcfs"             # fcfs | priority (lower trace priority first, vLLM's convention)
    max_batch_size: int = 256
    max_tokens_per_step: int = 2048
    chunked_prefill: bool = True
    block_size: int = 16
    max_model_len: int | str | None = None
    prefix_caching: bool = False     # reuse cached prompt prefixes (the trace's prefix block ids) across requests
    preemption: str = "recompute"    # recompute | swap (KV copied to host memory over PCIe and back)
    swap_space_GB: float = 4.0       # host memory per GPU for swapped KV, 1e9-byte GB (vLLM's default is 4 GiB)
    # TPOT budget: prompt tokens join a step only while its predicted time stays within it
    # (batching up to the TPOT limit, as MLPerf Server submissions tune it; null: tokens only)
    step_time_budget_s: float | None = None

    def context_limit(self, model_max_positions: int) -> int | None:
        """Longest prompt + output a request may have (None: only the KV cache limits it)."""
        if self.max_model_len == "model":
            return model_max_positions
        return self.max_model_len  # type: ignore[return-value]

    def __post_init__(self) -> None:
        require(self.policy in ("fcfs", "priority"), f"scheduler.policy={self.policy!r} is not one of ['fcfs', 'priority']")
        require(self.max_batch_size >= 1, f"scheduler.max_batch_size={self.max_batch_size!r} must be >= 1")
        require(self.max_tokens_per_step >= 1, f"scheduler.max_tokens_per_step={self.max_tokens_per_step!r} must be >= 1")
        require(self.block_size >= 1, f"scheduler.block_size={self.block_size!r} must be >= 1")
        require(self.preemption in ("recompute", "swap"),
                f"scheduler.preemption={self.preemption!r} is not one of ['recompute', 'swap']")
        require(isinstance(self.swap_space_GB, (int, float)) and not isinstance(self.swap_space_GB, bool)
                and self.swap_space_GB >= 0, f"scheduler.swap_space_GB={self.swap_space_GB!r} must be a number >= 0")
        require(self.step_time_budget_s is None or (isinstance(self.step_time_budget_s, (int, float))
                                                    and not isinstance(self.step_time_budget_s, bool)
                                                    and self.step_time_budget_s > 0),
                f"scheduler.step_time_budget_s={self.step_time_budget_s!r} must be null or a number of seconds > 0")
        require(isinstance(self.prefix_caching, bool),
                f"scheduler.prefix_caching={self.prefix_caching!r} must be true or false")
        require(self.max_model_len is None or self.max_model_len == "model"
                or (isinstance(self.max_model_len, int) and self.max_model_len >= 2),
                f"scheduler.max_model_len={self.max_model_len!r} must be null, 'model' or an integer >= 2")


@dataclass
class SeqWork:
    """One sequence's share of a planned step (``proposed`` draft tokens under speculation)."""

    request: int
    context: int
    new_tokens: int
    samples: bool
    proposed: int = 0


@dataclass
class StepPlan:
    work: list[SeqWork]
    batch: BatchShape
    prefill_tokens: int
    decode_tokens: int
    preempted: list[int]
    swap_out_blocks: int = 0     # KV blocks copied to host memory before this step (preemption=swap)
    swap_in_blocks: int = 0      # KV blocks copied back from host memory before this step


@dataclass
class DecodeSpan:
    """Steady decode: ``steps`` iterations of ``plan`` (all running sequences decoding one
    token each) that follow one another with nothing else changing, step ``j`` attending to
    ``j`` more cached tokens per sequence. The pool holds ``used_blocks`` during step 0; a
    sequence whose first new block is needed at step ``f`` (``firsts``) takes one more at
    ``f``, ``f + block_size``, ... ``waiting`` is the queue length throughout (arrivals cut a span)."""

    plan: StepPlan
    steps: int
    used_blocks: int
    firsts: list[int]
    block_size: int
    waiting: int

    def batch(self, steps: int) -> BatchShape:
        """The first ``steps`` steps' batch shapes as one shape of arrays (contexts grow by 1)."""
        b = self.plan.batch
        grown = np.arange(steps, dtype=np.float64) * b.num_seqs
        return BatchShape(b.num_seqs, b.new_tokens, b.kv_tokens_read + grown, b.attention_pairs + grown,
                          b.sampled_tokens, b.query_blocks)

    def kv_blocks_used(self, steps: int) -> np.ndarray:
        """The pool's use during each of the first ``steps`` steps."""
        bs = self.block_size
        j = np.arange(steps, dtype=np.int64)
        if len(self.firsts) <= 8:
            used = np.full(steps, self.used_blocks, dtype=np.int64)
            for f in self.firsts:
                used += (j + (bs - f)) // bs        # blocks taken by step j: 0 before f, then 1 per bs
            return used
        per_phase = np.bincount(np.asarray(self.firsts, dtype=np.int64), minlength=bs + 1)
        used = np.empty(steps, dtype=np.int64)
        used[0] = self.used_blocks
        used[1:] = per_phase[j[:-1] % bs + 1]           # blocks taken at step j (1 <= j < steps)
        return np.cumsum(used, out=used)


class ContinuousBatcher:
    """Queues and per-request progress of one replica; :meth:`plan` decides the next step."""

    def __init__(self, config: SchedulerConfig, pool: KVBlockPool, requests: RequestStore,
                 prefix_ids: Sequence[np.ndarray] | None = None, host_blocks: int = 0,
                 generated_out: tuple[list[int], int] | None = None, hands_off: bool = False,
                 step_s: Callable[[BatchShape], float] | None = None) -> None:
        """``prefix_ids``: with prefix caching, each request's prompt unit ids, by request id;
        ``host_blocks``: KV blocks host memory holds for swapped requests (preemption=swap);
        ``generated_out``: ``(counts, k)``: keep ``counts[k]`` equal to the output tokens the
        requests in flight here have generated so far (what a router may read);
        ``hands_off``: a prefill pool's replica (disaggregated serving): a request that has
        sampled its first token leaves the batch, its KV blocks held until :meth:`release`;
        ``step_s``: the replica's predicted step time for a batch (needed by
        ``scheduler.step_time_budget_s``)."""
        self.config = config
        require(config.step_time_budget_s is None or step_s is not None,
                "scheduler.step_time_budget_s needs the replica's step-time model")
        self.step_s = step_s if config.step_time_budget_s is not None else None
        self.pool = pool
        self.requests = requests
        self.prefix_ids = prefix_ids if pool.unit_tokens else None
        self.prompt = requests.prompt        # the store's columns, indexed by request id
        self.output = requests.output
        self.computed = requests.computed
        self.generated = requests.generated
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        self.busy: set[int] = set()
        self.preemptions = 0
        self._gen, self._gen_k = generated_out if generated_out is not None else ([0], 0)
        self.by_priority = config.policy == "priority"
        self.host_blocks = host_blocks if config.preemption == "swap" else 0
        self.host_free = self.host_blocks
        self.swapped: dict[int, int] = {}     # request -> its KV blocks in host memory
        self.swap_outs = self.swap_ins = 0
        self._swap_out_blocks = 0             # of the step being planned
        self.hands_off = hands_off
        #: a decode pool's replica: requests whose KV comes from the prefill pool, waiting for blocks
        self.incoming: deque[int] = deque()

    @property
    def generated_total(self) -> int:
        """Output tokens the requests in flight here have generated so far."""
        return self._gen[self._gen_k]

    # ----- queue changes ----------------------------------------------------------------------
    def _key(self, request: int) -> tuple[int, int]:
        return self.requests.priority[request], self.requests.request_id[request]

    def add(self, request: int) -> None:
        """Queue an arrival: last (fcfs), or after every waiting request of a lower or equal
        priority value that arrived before it (priority)."""
        if not self.by_priority:
            self.waiting.append(request)
            return
        key, waiting, i = self._key(request), self.waiting, len(self.waiting)
        while i > 0 and key < self._key(waiting[i - 1]):
            i -= 1
        waiting.insert(i, request)

    def evict_all(self) -> list[int]:
        """The replica lost its GPUs (a fault): every request it held leaves (waiting, running,
        swapped), in request order; its KV cache and host swap space are empty again."""
        gone = sorted({*self.waiting, *self.running, *self.incoming}, key=self.requests.request_id.__getitem__)
        self.waiting.clear()
        self.running.clear()
        self.incoming.clear()
        self.busy.clear()
        self.swapped.clear()
        self.host_free = self.host_blocks
        self.pool.clear()
        self._gen[self._gen_k] = 0
        return gone

    # ----- disaggregated serving -----------------------------------------------------------
    def reserve_incoming(self) -> list[int]:
        """Blocks for the KV of the requests coming from the prefill pool, in the order they
        came, while the pool has them beyond the reserve an admission keeps for running
        requests (called between steps); returns the requests that got theirs."""
        pool, got = self.pool, []
        while self.incoming:
            r = self.incoming[0]
            reserve = max(1, pool.total_blocks // 100) if self.running else 0
            if pool.blocks_for(self.prompt[r]) + reserve > pool.free_blocks:
                break
            pool.grow(r, self.prompt[r])
            self.incoming.popleft()
            got.append(r)
        return got

    def accept_kv(self, request: int) -> None:
        """``request``'s prompt KV (and first token) has arrived in its reserved blocks: it
        joins the running batch to decode."""
        self.computed[request] = self.prompt[request]
        self.running.append(request)
        self._gen[self._gen_k] += self.generated[request]

    def release(self, request: int) -> None:
        """Free the blocks ``request`` holds here (its KV has left, or is no longer wanted)."""
        self.pool.free(request)

    def pending(self, request: int) -> int:
        return self.prompt[request] + self.generated[request] - self.computed[request]

    def has_work(self) -> bool:
        return bool(self.waiting) or any(r not in self.busy for r in self.running)

    def _preempt(self, victim: int) -> None:
        """Take ``victim`` off the GPU: its KV is swapped to host memory if that is the mode and
        it fits (and none of it is a shared cached prefix), otherwise dropped to be recomputed."""
        self.running.remove(victim)
        blocks = self.pool.held.get(victim, 0)
        if self.host_blocks and 0 < blocks <= self.host_free and not self.pool.shared.get(victim):
            self.host_free -= blocks
            self.swapped[victim] = blocks
            self.swap_outs += 1
            self._swap_out_blocks += blocks
            self.pool.free(victim)              # computed positions are kept: their KV is on the host
        else:
            self.pool.free(victim)
            self.computed[victim] = 0
        if self.by_priority:
            self.add(victim)          # back in its place by (priority, arrival)
        else:
            self.waiting.appendleft(victim)
        self.preemptions += 1
        self.requests.preemptions[victim] += 1

    # ----- the decision -------------------------------------------------------------------------
    def decode_ready(self) -> tuple[int, float]:
        """Decoding sequences free to run now, and their mean context (for the gamma policy)."""
        n, ctx = 0, 0.0
        for r in self.running:
            if r not in self.busy and self.generated[r] >= 1 and self.pending(r) == 1:
                n += 1
                ctx += self.computed[r]
        return n, (ctx / n if n else 0.0)

    def _coming_decodes(self) -> list[SeqWork]:
        """The decoding sequences a step will carry (free, one pending token), as work."""
        computed = self.computed
        return [SeqWork(r, computed[r], 1, True) for r in self.running
                if r not in self.busy and self.generated[r] >= 1 and self.pending(r) == 1]

    def _within_time(self, work: list[SeqWork], coming: list[SeqWork], r: int, ctx: int, n: int,
                     samples_at: int) -> int:
        """The most prompt tokens (at most ``n``) sequence ``r`` at ``ctx`` may add to ``work``
        and the decodes still ``coming`` into the step with its predicted time within
        ``scheduler.step_time_budget_s`` (0: none); ``samples_at``: the chunk size that
        completes the prompt (it then samples). A chunk with nothing else to run is not held."""
        limit, step_s = self.config.step_time_budget_s, self.step_s
        assert limit is not None and step_s is not None
        planned = {w.request for w in work}
        others = work + [c for c in coming if c.request not in planned and c.request != r]
        if not others:
            return n
        base = _shape(others)

        def fits(k: int) -> bool:
            return step_s(base + _shape([SeqWork(r, ctx, k, k >= samples_at)])) <= limit

        if fits(n):
            return n
        if not self.config.chunked_prefill or not fits(1):
            return 0
        lo, hi = 1, n          # fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def plan(self, gamma: int = 0, verified: Callable[[int], int] | None = None) -> StepPlan | None:
        """Choose the next step's sequences and token counts, or None if nothing can run.

        With ``gamma > 0`` every decoding sequence verifies its last token plus up to ``gamma``
        draft tokens (never more than it still needs to finish its output); ``verified(k)``
        (a draft tree's token count for ``k`` levels) replaces ``1 + k`` when given.
        """
        cfg, pool = self.config, self.pool
        running, busy, computed, generated, prompt = self.running, self.busy, self.computed, self.generated, self.prompt
        chunked, max_batch = cfg.chunked_prefill, cfg.max_batch_size
        budget = cfg.max_tokens_per_step
        work: list[SeqWork] = []
        preempted: list[int] = []
        self._swap_out_blocks = swap_in = 0
        if self.by_priority:         # the most urgent first: later (lower) ones are the victims
            running.sort(key=self._key)
        # under a step-time budget, the decodes this step will carry whatever their order
        coming = self._coming_decodes() if self.step_s is not None else []
        i = 0
        while i < len(running) and budget > 0 and len(work) < max_batch:
            r = running[i]
            if r in busy:
                i += 1
                continue
            ctx = computed[r]
            pending = prompt[r] + generated[r] - ctx
            n = min(pending, budget) if chunked else pending
            if not chunked and n > budget and work:
                i += 1
                continue
            if pending > 1 and self.step_s is not None:   # a prompt chunk: within the time budget
                n = self._within_time(work, coming, r, ctx, n, pending)
                if n == 0:
                    i += 1
                    continue
            proposed = 0
            if gamma > 0 and pending == 1 and generated[r] >= 1:
                proposed = max(0, min(gamma, self.output[r] - generated[r] - 1, budget - 1))
                n = 1 + proposed
                if verified is not None and proposed:
                    n = verified(proposed)
                    while n > budget and proposed > 1:      # a tree that does not fit: fewer levels
                        proposed -= 1
                        n = verified(proposed)
                    if n > budget:
                        proposed, n = 0, 1
            grown = pool.grow(r, ctx + n)
            if not grown and proposed and n > 1 + proposed:
                # a draft tree's candidates need slots beyond the output's length, which
                # admission never promised: verify a chain of the same levels instead
                n = 1 + proposed
                grown = pool.grow(r, ctx + n)
            while not grown:
                victim: int | None
                if self.by_priority:   # the lowest priority, latest arrival among those not in flight (r too)
                    victim = max((v for v in self.running if v not in self.busy or v == r), key=self._key)
                    if victim == r and not any(v != r and v not in self.busy for v in self.running):
                        victim = None
                else:
                    victim = next((v for v in reversed(self.running) if v not in self.busy and v != r), None)
                if victim is None:
                    # Only r itself could make room. If requests in flight hold blocks, wait for
                    # them (preempting r would let it be re-admitted at once and thrash);
                    # otherwise recompute r later, as vLLM does.
                    if not any(v in self.busy for v in self.running):
                        victim = r
                    else:
                        break
                self._preempt(victim)
                preempted.append(victim)
                if victim == r:
                    break
                grown = pool.grow(r, ctx + n)
            if not grown:
                if r in self.running:
                    i += 1  # r waits for blocks held by micro-batches in flight
                continue  # (or r itself was preempted: do not advance i)
            work.append(SeqWork(r, ctx, n, n >= pending, proposed))
            self.busy.add(r)  # now in this step: never a preemption victim
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(work) < cfg.max_batch_size:
            r = self.waiting[0]
            if r in preempted:
                break  # just made room by leaving: not back in the same step
            hits: list[int] = []
            swapped = self.swapped.get(r, 0)
            if self.prefix_ids is not None and not swapped:
                hits = pool.cached_prefix(self.prefix_ids[self.requests.request_id[r]], prompt[r])
            # positions whose KV is at hand: a cached prefix, or everything a swapped request had
            cached = computed[r] if swapped else len(hits) * pool.unit_tokens if hits else 0   # type: ignore[operator]
            pending = prompt[r] + generated[r] - cached
            n = min(pending, budget) if cfg.chunked_prefill else pending
            if not cfg.chunked_prefill and n > budget and work:
                break
            if self.step_s is not None and pending > 1:    # a prompt within the step-time budget
                n = self._within_time(work, [], r, cached, n, pending)
                if n == 0:
                    break
            reserve = max(1, pool.total_blocks // 100) if self.running else 0
            need = pool.blocks_for(cached + n) - len(hits) * pool.unit_blocks
            if hits:
                need += pool.evictable_among(hits)
            if need + reserve > pool.free_blocks:
                break
            if swapped:
                self.host_free += self.swapped.pop(r)
                self.swap_ins += 1
                swap_in += swapped
            elif self.prefix_ids is not None:
                computed[r] = pool.reference(r, hits, prompt[r])
                if self.requests.preemptions[r] == 0:
                    self.requests.cached[r] = cached
            pool.grow(r, cached + n)
            self.waiting.popleft()
            self.running.append(r)
            work.append(SeqWork(r, cached, n, n == pending))
            self.busy.add(r)
            budget -= n
        if not work:
            return None
        batch = _shape(work)
        prefill = sum(w.new_tokens for w in work if self.computed[w.request] < self.prompt[w.request])
        decode = sum(w.new_tokens for w in work) - prefill
        return StepPlan(work, batch, prefill, decode, preempted, self._swap_out_blocks, swap_in)

    # ----- steady decode spans -------------------------------------------------------------
    def decode_span(self, plan: StepPlan, max_steps: int) -> DecodeSpan | None:
        """How many identical decode steps, starting with ``plan`` (already planned), follow
        one another before something changes: the first request finishing (it finishes in the
        span's last step), a sequence needing a KV block the pool does not have (the span ends
        before that step), or ``max_steps``. None if ``plan`` is not steady decode (a prefill
        chunk, a preemption, speculation, a running request left out) or the span would be one
        step. Waiting requests that ``plan`` could not admit stay unadmitted throughout: the
        token budget and batch room are the same every step and free blocks only shrink.
        """
        work = plan.work
        if (max_steps < 2 or plan.preempted or plan.prefill_tokens or plan.swap_in_blocks
                or len(work) != len(self.running)):
            return None
        gen, out, pool = self.generated, self.output, self.pool
        remaining = max_steps
        for w in work:
            r = w.request
            if w.new_tokens != 1 or not w.samples or w.proposed or gen[r] < 1:
                return None
            if pool.blocks_held(r) != pool.blocks_for(w.context + 1):
                return None
            remaining = min(remaining, out[r] - gen[r])
        if remaining < 2:
            return None
        # A sequence with c cached tokens needs a new block at step j >= 1 when (c + j) is a
        # multiple of the block size: at f = (-c) mod bs (bs if 0), then every bs steps.
        # no eviction inside a span (a waiting request's cached prefix stays as it was)
        bs, free = pool.block_size, pool.free_blocks - pool.evictable_blocks
        firsts = [(-w.context) % bs or bs for w in work]
        last = remaining - 1
        need = 0
        for f in firsts:
            if f <= last:
                need += (last - f) // bs + 1
        steps = remaining
        if need > free:      # the pool runs short: the span ends before the step that would overflow
            per_phase = np.bincount(np.asarray(firsts, dtype=np.int64), minlength=bs + 1)
            j = np.arange(1, remaining)
            cum = np.cumsum(per_phase[(j - 1) % bs + 1])
            steps = int(np.flatnonzero(cum > free)[0]) + 1
            if steps < 2:
                return None
        return DecodeSpan(plan, steps, pool.used_blocks, firsts, bs, len(self.waiting))

    def advance_span(self, span: DecodeSpan, steps: int) -> StepPlan:
        """Apply the first ``steps - 1`` steps of ``span`` at once (positions cached, tokens
        sampled, decode passes, KV blocks held) and plan its last step, which the caller
        completes as any step (:meth:`complete`)."""
        k = steps - 1
        passes = self.requests.decode_passes
        last = []
        self._gen[self._gen_k] += k * len(span.plan.work)
        for w in span.plan.work:
            r = w.request
            self.computed[r] = w.context + k
            self.generated[r] += k
            passes[r] += k
            self.pool.grow(r, w.context + k + 1)
            last.append(SeqWork(r, w.context + k, 1, True))
        return StepPlan(last, _shape(last), 0, len(last), [])

    def complete(self, plan: StepPlan, accepted: dict[int, int] | None = None) -> list[tuple[int, bool, bool]]:
        """Apply a finished step; returns ``(request, emitted_first_token, finished)`` per sampled request.

        ``accepted[r]`` is how many of r's draft tokens the verification accepted: r gains
        ``accepted + 1`` tokens and the rejected positions leave the KV cache. A step that
        samples after the first token counts as one decode pass of the request.
        """
        events = []
        passes = self.requests.decode_passes
        for w in plan.work:
            r = w.request
            self.busy.discard(r)
            if w.samples and (w.proposed or self.generated[r] >= 1):
                passes[r] += 1
            if w.proposed:  # verification: keep the accepted drafts, roll back the rest
                k = min(w.proposed, (accepted or {}).get(r, 0))
                self.computed[r] = w.context + 1 + k
                self.pool.shrink(r, self.computed[r])
                gained = k + 1
            else:
                self.computed[r] = w.context + w.new_tokens
                gained = 1 if w.samples else 0
                if self.prefix_ids is not None and w.context < self.prompt[r] <= self.computed[r]:
                    self.pool.insert(r, self.prefix_ids[self.requests.request_id[r]], self.prompt[r])
            if gained:
                self.generated[r] += gained
                g = self.generated[r]
                self._gen[self._gen_k] += gained
                finished = g >= self.output[r]
                if finished:
                    self.running.remove(r)
                    self.pool.free(r)
                    self._gen[self._gen_k] -= g
                elif self.hands_off and g == gained:   # prefilled: on to the decode pool, KV kept
                    self.running.remove(r)
                    self._gen[self._gen_k] -= g
                events.append((r, g == gained and not w.proposed, finished))
        return events


def _shape(work: list[SeqWork]) -> BatchShape:
    kv = pairs = 0.0
    new = sampled = blocks = 0
    for w in work:
        n, c = w.new_tokens, w.context
        new += n
        kv += c + n
        pairs += n * (c + (n + 1) / 2.0)
        sampled += (n if w.proposed else 1) if w.samples else 0  # verification needs logits at every position
        blocks += -(-n // ATTENTION_QUERY_BLOCK)
    return BatchShape(len(work), new, kv, pairs, sampled, blocks)
