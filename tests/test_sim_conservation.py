"""Conservation properties of whole simulations (hypothesis) and of the KV block pool.

Rules checked, for random small synthetic workloads and random parallel/scheduler settings:

* every request completes exactly once: one first-token event, one finish event, and the
  policy samples exactly ``output_tokens`` tokens for it (observed by wrapping the
  replica's :class:`~sim.scheduler.ContinuousBatcher`); ``request_id`` is unique;
* ``requests.parquet`` echoes the workload exactly (arrival, prompt and output tokens);
* timestamps are ordered (``arrival <= first_token <= finish``) and the derived columns are
  the stated functions of them (``ttft``, ``e2e``, ``tpot = (finish-first)/(out-1)``, NaN for
  one-token outputs); every first-token and finish time is the end of one of its replica's
  steps;
* token accounting of the steps: prefill tokens cover every prompt, and without preemption
  ``sum(prefill) == sum(prompt)`` and ``sum(decode) + requests == sum(output)``;
* with ``pp = 1`` a replica's steps never overlap, are numbered 0..k-1, respect
  ``max_batch_size`` and ``max_tokens_per_step``, and their four time parts add up to the
  duration;
* the KV block pool is conserved: ``free + held == total`` after every decision, and every
  block is back in the pool when the run ends;
* under KV pressure requests are preempted and recomputed, and still every request that fits
  completes with its exact output tokens; exactly the requests whose ``prompt + output``
  exceed the replica's KV capacity are rejected.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.build
from sim.app import run
from sim.build import load_workload
from sim.config.compose import compose_config
from sim.config.parse import parse_config
from sim.policy.batching import ContinuousBatcher, SchedulerConfig
from sim.policy.kv_cache import KVBlockPool
from sim.policy.requests import RequestStore

PARTS = ("compute_s", "memory_s", "network_s", "fixed_s")

_BASES: dict[str, dict] = {}


def base_config(topology: str) -> dict:
    """A composed config (llama3_8b on h100) for ``topology``, composed once per module."""
    if topology not in _BASES:
        _BASES[topology] = compose_config([
            "workload=synthetic", "model=llama3_8b", f"topology={topology}", "output.progress=never",
            "debug.check_invariants=true"])
    return copy.deepcopy(_BASES[topology])


def recording_batcher():
    """A ContinuousBatcher subclass that records what the policy did, and the instances made."""
    instances: list = []

    class Recording(ContinuousBatcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.samples: Counter = Counter()
            self.firsts: Counter = Counter()
            self.finishes: Counter = Counter()
            self.pool_violations: list[str] = []
            instances.append(self)

        def _check_pool(self, when: str) -> None:
            pool = self.pool
            held = sum(pool.held.values())
            if not (0 <= pool.free_blocks <= pool.total_blocks and pool.free_blocks + held == pool.total_blocks
                    and all(v > 0 for v in pool.held.values())):
                self.pool_violations.append(f"{when}: free={pool.free_blocks} held={held} total={pool.total_blocks}")

        def plan(self, gamma=0, verified=None):
            p = super().plan(gamma, verified)
            self._check_pool("plan")
            if p is not None:
                for w in p.work:  # every sequence of a step holds the KV blocks it writes
                    if self.pool.held.get(w.request, 0) * self.pool.block_size < w.context + w.new_tokens:
                        self.pool_violations.append(f"request {w.request} writes beyond its blocks")
            return p

        def advance_span(self, span, steps):
            """A fast-forwarded span: its first ``steps - 1`` steps sample one token per sequence."""
            last = super().advance_span(span, steps)
            self._check_pool("span")
            for w in span.plan.work:
                self.samples[self.rid(w.request)] += steps - 1
            for w in last.work:
                if self.pool.held.get(w.request, 0) * self.pool.block_size < w.context + w.new_tokens:
                    self.pool_violations.append(f"request {w.request} writes beyond its blocks (span)")
            return last

        def complete(self, plan, accepted=None):
            events = super().complete(plan, accepted)
            self._check_pool("complete")
            for w in plan.work:  # tokens emitted: one per sample, accepted drafts + 1 per verification
                if w.samples:
                    self.samples[self.rid(w.request)] += 1 + (min(w.proposed, (accepted or {}).get(w.request, 0)) if w.proposed else 0)
            for r, first, finished in events:
                if first:
                    self.firsts[self.rid(r)] += 1
                if finished:
                    self.finishes[self.rid(r)] += 1
            return events

        def rid(self, slot: int) -> int:
            """The trace's id of the request in ``slot`` (slots are reused once a request is logged)."""
            return self.requests.request_id[slot]

    return Recording, instances


def run_recorded(cfg: dict, out: Path):
    """Run ``cfg`` with a recording batcher; returns (summary, requests, steps, batchers)."""
    Recording, instances = recording_batcher()
    with mock.patch.object(sim.build, "ContinuousBatcher", Recording):
        summary = run(cfg, out)
    req = {k: np.asarray(v) for k, v in pq.read_table(out / "requests.parquet").to_pydict().items()}
    steps = {k: np.asarray(v) for k, v in pq.read_table(out / "steps.parquet").to_pydict().items()}
    return summary, req, steps, instances


def check_run(cfg: dict, summary, req, steps, batchers, *, expect_no_rejections: bool) -> None:
    """Every invariant of the module docstring that holds for any pp=1 run."""
    rc = parse_config(cfg)
    table = load_workload(rc)
    n = len(table)
    prompt = np.asarray(table.prompt_tokens)
    output = np.asarray(table.output_tokens)
    capacity = summary["memory"]["kv_capacity_tokens_per_replica"]

    # --- the request table echoes the workload, one row per request -----------------------
    assert len(req["request_id"]) == n
    assert np.array_equal(req["request_id"], np.arange(n))
    assert len(set(req["request_id"].tolist())) == n
    np.testing.assert_array_equal(req["prompt_tokens"], prompt)
    np.testing.assert_array_equal(req["output_tokens"], output)
    np.testing.assert_array_equal(req["arrival_s"], np.asarray(table.arrival_s))

    # --- exactly the requests that cannot fit are rejected; the rest complete once ----------
    too_big = prompt + output - 1 > capacity  # the last output token never enters the KV cache
    completed = req["status"] == "completed"
    assert set(req["status"].tolist()) <= {"completed", "rejected"}
    np.testing.assert_array_equal(completed, ~too_big)
    if expect_no_rejections:
        assert completed.all()
    assert summary["requests"]["total"] == n
    assert summary["requests"]["completed"] == int(completed.sum())
    assert summary["requests"]["completed"] + summary["requests"]["rejected"] == n

    samples, firsts, finishes = Counter(), Counter(), Counter()
    for b in batchers:
        assert not b.pool_violations, b.pool_violations[:3]
        # every block is returned when the run ends
        assert b.pool.free_blocks == b.pool.total_blocks and not b.pool.held
        assert not b.running and not b.waiting
        samples.update(b.samples)
        firsts.update(b.firsts)
        finishes.update(b.finishes)
    for r in range(n):
        if completed[r]:
            assert finishes[r] == 1, f"request {r} finished {finishes[r]} times"
            assert firsts[r] == 1, f"request {r} emitted its first token {firsts[r]} times"
            assert samples[r] == output[r], f"request {r} sampled {samples[r]} of {output[r]} tokens"
        else:
            assert finishes[r] == firsts[r] == samples[r] == 0

    # --- timestamps and the columns derived from them --------------------------------------
    a, f1, fin = req["arrival_s"][completed], req["first_token_s"][completed], req["finish_s"][completed]
    assert np.all(np.isfinite(f1)) and np.all(np.isfinite(fin))
    assert np.all(a <= f1) and np.all(f1 <= fin)
    np.testing.assert_allclose(req["ttft_s"][completed], f1 - a, rtol=1e-12, atol=0)
    np.testing.assert_allclose(req["e2e_s"][completed], fin - a, rtol=1e-12, atol=0)
    out_c = output[completed]
    tpot = req["tpot_s"][completed]
    one = out_c == 1
    assert np.all(np.isnan(tpot[one]))
    np.testing.assert_allclose(tpot[~one], (fin[~one] - f1[~one]) / (out_c[~one] - 1), rtol=1e-12, atol=0)
    rej = ~completed
    assert np.all(np.isnan(req["first_token_s"][rej])) and np.all(np.isnan(req["finish_s"][rej]))
    assert np.all(req["replica"][rej] == -1)
    assert np.all((req["replica"][completed] >= 0) & (req["replica"][completed] < rc.parallel.dp))
    # every first token and finish happens at the end of one of the replica's steps
    for k in range(rc.parallel.dp):
        m = steps["replica"] == k
        ends = np.sort(steps["start_s"][m] + steps["duration_s"][m])
        mine = completed & (req["replica"] == k)
        for t in np.concatenate([req["first_token_s"][mine], req["finish_s"][mine]]):
            j = np.searchsorted(ends, t)
            near = [abs(ends[i] - t) for i in (j - 1, j) if 0 <= i < len(ends)]
            assert near and min(near) <= 1e-9 * max(1.0, t), f"token at {t} is not at a step end"
        # first scheduled at the start of one of the replica's steps that computed prompt tokens
        prefill_starts = np.sort(steps["start_s"][m & (steps["prefill_tokens"] > 0)])
        sched = req["scheduled_s"][mine]
        j = np.clip(np.searchsorted(prefill_starts, sched), 0, max(0, len(prefill_starts) - 1))
        assert len(sched) == 0 or np.all(np.abs(prefill_starts[j] - sched) <= 1e-12 * np.maximum(1.0, sched))
    assert np.all(a <= req["scheduled_s"][completed]) and np.all(req["scheduled_s"][completed] < f1)
    assert np.all(np.isnan(req["scheduled_s"][req["status"] == "rejected"]))

    # --- token accounting of the steps -------------------------------------------------------
    preemptions = summary["requests"]["preemptions"]
    assert preemptions == int(req["preemptions"].sum()) == int(steps["preempted"].sum())
    assert preemptions == sum(b.preemptions for b in batchers)
    p_done, o_done = prompt[completed], output[completed]
    assert steps["prefill_tokens"].sum() >= p_done.sum()
    assert steps["prefill_tokens"].sum() + steps["decode_tokens"].sum() >= (p_done + o_done - 1).sum()
    if preemptions == 0:
        assert steps["prefill_tokens"].sum() == p_done.sum()
        assert steps["decode_tokens"].sum() + int(completed.sum()) == o_done.sum()

    # --- steps: per replica, sequential (pp=1), numbered, within the scheduler's limits ---------
    sc = rc.scheduler
    total_blocks = capacity // sc.block_size
    assert np.all(steps["duration_s"] > 0)
    assert np.all(steps["batch_size"] >= 1) and np.all(steps["batch_size"] <= sc.max_batch_size)
    tokens = steps["prefill_tokens"] + steps["decode_tokens"]
    assert np.all(tokens >= steps["batch_size"])
    if sc.chunked_prefill:
        assert np.all(tokens <= sc.max_tokens_per_step)
    else:  # a prompt larger than the budget runs alone
        assert np.all((tokens <= sc.max_tokens_per_step) | (steps["batch_size"] == 1))
    assert np.all(steps["kv_blocks_used"] <= total_blocks)
    parts = sum(steps[p] for p in PARTS)
    if rc.parallel.pp == 1:
        np.testing.assert_allclose(parts, steps["duration_s"], rtol=1e-9, atol=0)
        for k in np.unique(steps["replica"]):
            m = steps["replica"] == k
            np.testing.assert_array_equal(steps["step"][m], np.arange(m.sum()))
            start, dur = steps["start_s"][m], steps["duration_s"][m]
            assert np.all(np.diff(start) >= 0), "steps are recorded in start order"
            ends = start + dur
            # next start >= this start + duration (rounding of start+duration allowed)
            assert np.all(ends[:-1] <= start[1:] * (1 + 1e-12) + 1e-15), "steps of one replica overlap"
        busy = steps["duration_s"].sum()
        np.testing.assert_allclose(summary["cost"]["busy_gpu_hours"],
                                   busy * rc.parallel.gpus_per_replica / 3600.0, rtol=1e-9)
        np.testing.assert_allclose(summary["time_breakdown"]["total_s"], busy, rtol=1e-9)
        assert summary["cost"]["busy_gpu_hours"] <= summary["cost"]["gpus"] * \
            summary["throughput"]["makespan_s"] / 3600.0 * (1 + 1e-9)
    assert summary["steps"] == len(steps["step"])

    # --- the summary is computed from these tables -----------------------------------------------
    if completed.any():
        for col in ("ttft_s", "e2e_s"):
            np.testing.assert_allclose(summary[col]["mean"], req[col][completed].mean(), rtol=1e-9)
            np.testing.assert_allclose(summary[col]["p50"], np.percentile(req[col][completed], 50), rtol=1e-9)
        assert summary["throughput"]["output_tokens"] == int(o_done.sum())
        makespan = np.nanmax(req["finish_s"]) - req["arrival_s"].min()
        np.testing.assert_allclose(summary["throughput"]["makespan_s"], makespan, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# random whole simulations
# ----------------------------------------------------------------------------------------------

@st.composite
def scenarios(draw):
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    dp = draw(st.sampled_from([1, 2]))
    fixed = draw(st.booleans())
    if fixed:
        prompt = draw(st.integers(1, 700))
        output = draw(st.integers(1, 48))
    else:
        prompt = {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 1500))}
        output = {"dist": "lognormal", "median": draw(st.integers(1, 24)), "sigma": 1.0, "min": 1, "max": 80}
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "n": draw(st.integers(1, 30)),
        "rate": draw(st.sampled_from([0.5, 5.0, 50.0, 1000.0])),
        "arrival": draw(st.sampled_from(["poisson", "gamma"])),
        "prompt": prompt,
        "output": output,
        "tp": tp,
        "dp": dp,
        "router": draw(st.sampled_from(["round_robin", "least_outstanding_tokens"])),
        "chunked": draw(st.booleans()),
        "max_batch_size": draw(st.integers(1, 12)),
        "max_tokens_per_step": draw(st.sampled_from([1, 7, 64, 256, 1024])),
        "block_size": draw(st.sampled_from([1, 16, 32])),
    }


def config_for(s: dict) -> dict:
    cfg = base_config("hgx" if s["tp"] * s["dp"] <= 8 else "multi_node_ib")
    w = cfg["workload"]
    cfg["seed"] = s["seed"]
    w.update(max_requests=s["n"], rate_per_s=s["rate"], arrival=s["arrival"],
             prompt_tokens=s["prompt"], output_tokens=s["output"])
    cfg["parallel"].update(tp=s["tp"], dp=s["dp"], pp=1, router=s["router"])
    cfg["scheduler"].update(chunked_prefill=s["chunked"], max_batch_size=s["max_batch_size"],
                            max_tokens_per_step=s["max_tokens_per_step"], block_size=s["block_size"])
    return cfg


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_runs_conserve_requests_tokens_and_time(s):
    """Every invariant of the module docstring, for random small workloads and plans."""
    cfg = config_for(s)
    with tempfile.TemporaryDirectory() as d:
        summary, req, steps, batchers = run_recorded(cfg, Path(d))
    assert len(batchers) == s["dp"]
    check_run(cfg, summary, req, steps, batchers, expect_no_rejections=True)


# ----------------------------------------------------------------------------------------------
# KV pressure: preemption and recomputation
# ----------------------------------------------------------------------------------------------

# llama3_8b bf16 holds 16.06 GB of weights on one GPU; with 0.23 x 80 GB - 2 GB usable, the KV
# cache is a few thousand tokens (2,576 with block_size 16), far below 60 requests' demand.
KV_TIGHT = ["engine.gpu_memory_utilization=0.23", "parallel.tp=1", "workload.rate_per_s=50",
            "workload.max_requests=60", "workload.prompt_tokens=400", "workload.output_tokens=300"]


@pytest.mark.parametrize("extra", [[], ["scheduler.chunked_prefill=false"], ["scheduler.block_size=1"],
                                   ["parallel.dp=2", "parallel.router=round_robin"]],
                         ids=["chunked", "whole-prompt", "block1", "dp2"])
def test_kv_pressure_preempts_and_still_completes_every_request(tmp_path, extra):
    """A tiny KV cache forces preemptions; every request still completes with exact tokens."""
    cfg = compose_config(["workload=synthetic", "model=llama3_8b", "output.progress=never", *KV_TIGHT, *extra])
    summary, req, steps, batchers = run_recorded(cfg, tmp_path)
    assert summary["memory"]["kv_capacity_tokens_per_replica"] < 4000
    assert summary["requests"]["preemptions"] > 0
    assert steps["preempted"].sum() > 0
    assert (req["preemptions"] > 0).any()
    # recomputation re-feeds the prompt (and generated tokens) of preempted requests
    assert steps["prefill_tokens"].sum() > req["prompt_tokens"].sum()
    check_run(cfg, summary, req, steps, batchers, expect_no_rejections=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), util=st.floats(0.2265, 0.24),
       block=st.sampled_from([1, 8, 16]), chunked=st.booleans(),
       budget=st.sampled_from([32, 256, 2048]), max_batch=st.integers(1, 64),
       high=st.integers(50, 3000))
def test_random_kv_pressure_runs_conserve(seed, util, block, chunked, budget, max_batch, high):
    """Random tight KV caches: preemption, recomputation and rejection keep every invariant."""
    cfg = base_config("hgx")
    cfg["engine"]["gpu_memory_utilization"] = util
    cfg["seed"] = seed
    cfg["workload"].update(max_requests=25, rate_per_s=100.0,
                           prompt_tokens={"dist": "uniform", "low": 1, "high": high},
                           output_tokens={"dist": "uniform", "low": 1, "high": 120})
    cfg["parallel"].update(tp=1, dp=1, pp=1)
    cfg["scheduler"].update(block_size=block, chunked_prefill=chunked, max_tokens_per_step=budget,
                            max_batch_size=max_batch)
    with tempfile.TemporaryDirectory() as d:
        summary, req, steps, batchers = run_recorded(cfg, Path(d))
    check_run(cfg, summary, req, steps, batchers, expect_no_rejections=False)


# ----------------------------------------------------------------------------------------------
# the KV block pool alone
# ----------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 64), block=st.integers(1, 32),
       ops=st.lists(st.tuples(st.sampled_from(["grow", "free"]), st.integers(0, 5), st.integers(0, 1200)),
                    max_size=60))
def test_kv_block_pool_conserves_blocks(total, block, ops):
    """free + held == total after any sequence of grow/free; a failed grow changes nothing."""
    pool = KVBlockPool(total, block)
    for op, r, tokens in ops:
        before_free, before_held = pool.free_blocks, dict(pool.held)
        if op == "grow":
            need = pool.extra_blocks(r, tokens)
            assert need == max(0, -(-tokens // block) - before_held.get(r, 0))
            ok = pool.grow(r, tokens)
            assert ok == (need <= before_free)
            if ok:
                assert pool.held.get(r, 0) * block >= tokens
                assert pool.free_blocks == before_free - need
                assert pool.held.get(r, 0) == before_held.get(r, 0) + need
            else:
                assert pool.free_blocks == before_free and pool.held == before_held
        else:
            pool.free(r)
            assert r not in pool.held
            assert pool.free_blocks == before_free + before_held.get(r, 0)
        assert 0 <= pool.free_blocks <= pool.total_blocks
        assert pool.free_blocks + sum(pool.held.values()) == pool.total_blocks
        assert pool.used_blocks == sum(pool.held.values())
        assert all(v > 0 for v in pool.held.values())
    for r in list(pool.held):
        pool.free(r)
    assert pool.free_blocks == pool.total_blocks


# ----------------------------------------------------------------------------------------------
# the batching policy alone (no SimPy): one micro-batch in flight, as with pp=1
# ----------------------------------------------------------------------------------------------

def drive_batcher(cfg: SchedulerConfig, blocks: int, prompt, output, in_flight: int = 1, max_plans: int = 20000):
    """Plan/complete until idle with up to ``in_flight`` steps outstanding (FIFO completion).

    Returns (samples, finishes, firsts, plans, pool); stops after ``max_plans`` plans.
    """
    prompt, output = np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)
    pool = KVBlockPool(blocks, cfg.block_size)
    b = ContinuousBatcher(cfg, pool, RequestStore.of(np.zeros(len(prompt)), prompt, output))
    for r in range(len(prompt)):
        b.add(r)
    samples, finishes, firsts = Counter(), Counter(), Counter()
    queue: list = []
    plans = 0
    while plans < max_plans:
        while len(queue) < in_flight:
            p = b.plan()
            if p is None:
                break
            plans += 1
            ids = [w.request for w in p.work]
            assert len(set(ids)) == len(ids)
            assert not set(ids) & {w.request for q in queue for w in q.work}, "request in two micro-batches"
            assert pool.free_blocks + sum(pool.held.values()) == pool.total_blocks
            assert len(ids) <= cfg.max_batch_size
            assert p.prefill_tokens + p.decode_tokens == sum(w.new_tokens for w in p.work)
            queue.append(p)
        if not queue:
            break
        p = queue.pop(0)
        for w in p.work:
            samples[w.request] += int(w.samples)
        for r, first, fin in b.complete(p):
            firsts[r] += int(first)
            finishes[r] += int(fin)
    return samples, finishes, firsts, plans, pool


@settings(max_examples=150, deadline=None)
@given(data=st.data(), block=st.sampled_from([1, 2, 4, 16]), blocks=st.integers(1, 60),
       chunked=st.booleans(), budget=st.integers(1, 300), max_batch=st.integers(1, 8))
def test_batcher_policy_finishes_every_request_that_fits(data, block, blocks, chunked, budget, max_batch):
    """Sequential steps (pp=1): every request with prompt+output <= capacity finishes once."""
    cap = blocks * block
    n = data.draw(st.integers(1, 10))
    prompt = data.draw(st.lists(st.integers(1, max(1, cap - 1)), min_size=n, max_size=n))
    output = [data.draw(st.integers(1, max(1, min(40, cap - p)))) for p in prompt]
    cfg = SchedulerConfig(max_batch_size=max_batch, max_tokens_per_step=budget, chunked_prefill=chunked,
                          block_size=block)
    samples, finishes, firsts, plans, pool = drive_batcher(cfg, blocks, prompt, output)
    assert plans < 20000, "the policy did not drain its queue"
    for r in range(n):
        assert finishes[r] == 1 and firsts[r] == 1 and samples[r] == output[r]
    assert pool.free_blocks == pool.total_blocks and not pool.held


def test_batcher_two_micro_batches_do_not_livelock():
    cfg = SchedulerConfig(max_tokens_per_step=215, chunked_prefill=True, block_size=16)
    # 52 blocks = 832 tokens: each request fits alone (787 and 739 tokens), not both together.
    samples, finishes, firsts, plans, pool = drive_batcher(cfg, 52, [785, 723], [2, 16], in_flight=2,
                                                           max_plans=2000)
    assert finishes[0] == 1 and finishes[1] == 1, f"after {plans} plans: finished {dict(finishes)}"


def test_batcher_two_requests_without_pipeline_finish():
    """The same two requests with one step in flight (pp=1) finish in a few dozen steps."""
    cfg = SchedulerConfig(max_tokens_per_step=215, chunked_prefill=True, block_size=16)
    samples, finishes, firsts, plans, pool = drive_batcher(cfg, 52, [785, 723], [2, 16], in_flight=1)
    assert finishes[0] == 1 and finishes[1] == 1 and plans < 100


class _PlanLimit(Exception):
    pass


def test_pipeline_run_under_kv_pressure_finishes(tmp_path):
    """pp=2, KV of 832 tokens, prompts 785 and 723 arriving together: both must complete."""
    trace = tmp_path / "two.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,785,2\n0.0,723,16\n")
    # stage weights 8.03 GB; 0.1260664448 x 80 GB - 2 GB leaves 840 tokens -> 832 (52 blocks of 16)
    cfg = compose_config(["model=llama3_8b", "parallel.tp=1", "parallel.pp=2", f"workload.path={trace}",
                          "engine.gpu_memory_utilization=0.1260664448", "scheduler.max_tokens_per_step=215",
                          "output.progress=never"])

    class Bounded(ContinuousBatcher):
        plans = 0

        def plan(self, gamma=0, verified=None):
            Bounded.plans += 1
            if Bounded.plans > 5000:
                raise _PlanLimit(f"{Bounded.plans} steps planned for 2 requests (livelock)")
            return super().plan(gamma, verified)

    with mock.patch.object(sim.build, "ContinuousBatcher", Bounded):
        try:
            summary = run(cfg, tmp_path / "out")
        except _PlanLimit as exc:
            pytest.fail(str(exc))
    assert summary["memory"]["kv_capacity_tokens_per_replica"] == 832
    assert summary["requests"]["completed"] == 2


# ----------------------------------------------------------------------------------------------
# pipeline parallelism: micro-batches overlap, busy time must not
# ----------------------------------------------------------------------------------------------

PP2_LOADED = ["workload=synthetic", "workload.max_requests=100", "model=llama3_8b", "parallel.tp=1",
              "parallel.pp=2", "workload.rate_per_s=50", "output.progress=never"]


def test_pipeline_run_conserves_requests_and_tokens(tmp_path):
    """pp=2 under load: micro-batches overlap, every request completes with exact tokens."""
    cfg = compose_config(PP2_LOADED)
    summary, req, steps, batchers = run_recorded(cfg, tmp_path)
    check_run(cfg, summary, req, steps, batchers, expect_no_rejections=True)
    # two micro-batches in flight: some steps overlap in time
    end = steps["start_s"] + steps["duration_s"]
    order = np.argsort(steps["start_s"], kind="stable")
    assert (end[order][:-1] > steps["start_s"][order][1:] + 1e-12).any()
    # a micro-batch's parts never exceed its duration (which includes waiting for a stage)
    parts = sum(steps[p] for p in PARTS)
    assert np.all(parts <= steps["duration_s"] * (1 + 1e-9))


def test_pipeline_busy_time_never_exceeds_makespan(tmp_path):
    summary = run(compose_config(PP2_LOADED), tmp_path)
    cost, makespan = summary["cost"], summary["throughput"]["makespan_s"]
    assert cost["busy_gpu_hours"] <= cost["gpus"] * makespan / 3600.0 * (1 + 1e-9), \
        f"{cost['busy_gpu_hours'] * 3600 / cost['gpus']:.2f} busy s per GPU in a {makespan:.2f} s makespan"
    assert cost["usd_per_million_output_tokens_busy"] <= cost["usd_per_million_output_tokens"] * (1 + 1e-9)


def test_a_broken_invariant_stops_the_run_with_one_line(tmp_path):
    """A batcher that loses a KV block (a simulated bug) is caught at the step it happens,
    naming the invariant, the replica and step, and the simulated time; the CLI exits 4."""
    from sim.errors import InvariantViolation

    class Leaky(ContinuousBatcher):
        def complete(self, plan, accepted=None):
            events = super().complete(plan, accepted)
            if self.pool.free_blocks > 0:
                self.pool.free_blocks -= 1           # a block vanishes
            return events

    cfg = base_config("hgx")
    cfg["workload"].update(max_requests=5)
    with mock.patch.object(sim.build, "ContinuousBatcher", Leaky), pytest.raises(InvariantViolation) as err:
        run(cfg, tmp_path / "run")
    message = str(err.value)
    assert "invariant 'KV conservation' violated" in message and "replica 0 step" in message and "t=" in message
    res = subprocess.run([sys.executable, "-m", "sim", f"hydra.run.dir={tmp_path / 'cli'}", "debug.check_invariants=true",
                          "workload.max_requests=20", "output.progress=never"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-500:]                 # the real batcher keeps every invariant


def test_arrivals_hold_token_counts_as_int32_only_when_they_fit():
    from sim.des.simulation import Arrivals

    a = Arrivals.of(np.zeros(2), np.array([5, 2**31 - 1]), np.array([1, 2]))
    assert a.prompt.dtype == np.int32 and a.output.dtype == np.int32
    assert a.prompt.tolist() == [5, 2**31 - 1]
    big = Arrivals.of(np.zeros(2), np.array([5, 2**31]), np.array([1, 2]))
    assert big.prompt.dtype == np.int64 and big.prompt.tolist() == [5, 2**31]
    assert len(Arrivals.of(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))) == 0


# ----------------------------------------------------------------------------------------------
# random pipelines, speculative decoding, fleets and preemption, invariants checked at run time
# ----------------------------------------------------------------------------------------------

LAYOUTS = {
    "pp2": {"parallel": {"tp": 1, "pp": 2, "dp": 1}},
    "pp4_dp2": {"parallel": {"tp": 1, "pp": 4, "dp": 2}},
    "speculative": {"parallel": {"tp": 2, "pp": 1, "dp": 1}, "speculative": "self"},
    "fleet": {"fleet": [{"hardware": "h100", "replicas": 2, "tp": 1}, {"hardware": "a100", "replicas": 1, "tp": 2}]},
    "preemption": {"parallel": {"tp": 1, "pp": 1, "dp": 1}, "engine": {"gpu_memory_utilization": 0.23}},
}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=st.sampled_from(sorted(LAYOUTS)), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40),
       rate=st.sampled_from([1.0, 20.0, 200.0]), chunked=st.booleans(), block=st.sampled_from([1, 16]),
       prompt=st.integers(1, 1200), output=st.integers(1, 300))
def test_random_pipeline_speculative_fleet_and_preemption_runs_hold_the_invariants(
        layout, seed, n, rate, chunked, block, prompt, output):
    """With ``debug.check_invariants=true`` every step and request of these runs is checked as
    it happens (once, monotonic times, KV conservation, budgets, FIFO admission); afterwards
    every request has completed exactly once with its exact output."""
    over = [f"seed={seed}", f"workload.max_requests={n}", f"workload.rate_per_s={rate}",
            f"workload.prompt_tokens={{dist: uniform, low: 1, high: {prompt}}}",
            f"workload.output_tokens={{dist: lognormal, median: {max(1, output // 4)}, sigma: 1.0, min: 1, max: {output}}}",
            f"scheduler.chunked_prefill={str(chunked).lower()}", f"scheduler.block_size={block}"]
    spec = LAYOUTS[layout]
    if "parallel" in spec:
        over += [f"parallel.{k}={v}" for k, v in spec["parallel"].items()]
    if "speculative" in spec:
        over += [f"speculative={spec['speculative']}"]
    if "engine" in spec:
        over += [f"engine.{k}={v}" for k, v in spec["engine"].items()]
    if "fleet" in spec:
        over += ["fleet=[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in g.items()) + "}" for g in spec["fleet"]) + "]"]
    cfg = compose_config(["workload=synthetic", "model=llama3_8b", "output.progress=never",
                          "debug.check_invariants=true", *over])
    with tempfile.TemporaryDirectory() as d:
        summary = run(cfg, Path(d))
        req = pq.read_table(Path(d) / "requests.parquet").to_pydict()
    done = [s == "completed" for s in req["status"]]
    assert summary["complete"] and req["request_id"] == list(range(n))
    assert summary["requests"]["completed"] + summary["requests"]["rejected"] == n
    assert all(s in ("completed", "rejected") for s in req["status"])
    for i in range(n):
        if done[i]:
            assert req["arrival_s"][i] <= req["scheduled_s"][i] < req["first_token_s"][i] <= req["finish_s"][i]
    if layout == "preemption" and summary["requests"]["preemptions"]:
        assert sum(req["preemptions"]) == summary["requests"]["preemptions"]
