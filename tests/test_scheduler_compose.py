"""Every scheduler option composes with every other (issue 13's features together): random
combinations of admission policy, preemption mode, prefix caching, chunking, block size,
router, data and pipeline parallelism, speculative decoding and KV pressure on the Mooncake
trace, autoscaling (every policy), and failures and stragglers (``faults=mtbf`` at a high rate, either recovery), each run
with the run-time invariants on (once, monotonic times, KV and host blocks conserved, shared
prefixes reclaimed only when unreferenced, budgets, FIFO per priority); afterwards every
request has completed, been rejected or failed exactly once."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyarrow.parquet as pq

from sim.app import run
from sim.config.compose import compose_config
from sim.errors import ConfigError


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["fcfs", "priority"]), preemption=st.sampled_from(["recompute", "swap"]),
       caching=st.booleans(), chunked=st.booleans(), block=st.sampled_from([16, 32]),
       router=st.sampled_from(["round_robin", "least_outstanding_tokens", "least_outstanding_time",
                               "least_outstanding_tokens_oracle", "prefix_aware"]),
       dp=st.integers(1, 3), pp=st.sampled_from([1, 2]), speculative=st.booleans(),
       util=st.sampled_from([0.3, 0.9]), n=st.integers(5, 60), rate=st.sampled_from([0.5, 2.0]),
       fast_forward=st.booleans(), budget=st.sampled_from([None, 0.05]),
       faults=st.sampled_from([None, "restart", "fail"]), autoscale=st.sampled_from([None, "queue", "utilization", "slo"]))
def test_scheduler_options_compose(policy, preemption, caching, chunked, block, router, dp, pp, speculative,
                                   util, n, rate, fast_forward, budget, faults, autoscale):
    if router == "prefix_aware":
        caching = True
    over = ["workload=mooncake_synthetic", f"workload.max_requests={n}", f"workload.rate_scale={rate}",
            "model=llama3_8b", "parallel.tp=1", f"parallel.pp={pp}", f"parallel.dp={dp}", f"parallel.router={router}",
            f"scheduler.policy={policy}", f"scheduler.preemption={preemption}",
            f"scheduler.prefix_caching={str(caching).lower()}", f"scheduler.chunked_prefill={str(chunked).lower()}",
            f"scheduler.block_size={block}", f"engine.gpu_memory_utilization={util}",
            f"sim.fast_forward={str(fast_forward).lower()}", "output.progress=never", "debug.check_invariants=true"]
    if speculative:
        over.append("speculative=self")
    if budget is not None:
        over.append(f"scheduler.step_time_budget_s={budget}")
    if faults is not None:    # a fault every ~10 s, a replica back ~2 s later, stragglers too
        over += ["faults=mtbf", "faults.rate_scale=2e6", f"faults.recovery={faults}", "faults.detect_s=1",
                 "faults.straggler_mtbf_hours=0.01", "faults.degraded_link_mtbf_hours=0.01"]
    if autoscale is not None:   # evaluated every 2 s, from one replica
        over += [f"autoscale={autoscale}", "autoscale.interval_s=2", "autoscale.scale_down_delay_s=6",
                 "autoscale.target_requests_per_replica=2", "autoscale.slo_ttft_s=0.2"]
    if faults is not None or autoscale is not None:
        over += ["spinup.warmup_s=0.5", "spinup.load_GBps_per_gpu=100"]
    with tempfile.TemporaryDirectory() as d:
        summary = run(compose_config(over), Path(d))
        req = pq.read_table(Path(d) / "requests.parquet").to_pydict()
    assert summary["complete"] and req["request_id"] == list(range(n))
    r = summary["requests"]
    assert r["completed"] + r["rejected"] + r["failed"] == n
    assert set(req["status"]) <= ({"completed", "rejected"} if faults is None else {"completed", "rejected", "failed"})
    if faults is not None:
        assert r["failed"] == summary["faults"]["requests_failed"]
        assert sum(req["restarts"]) == summary["faults"]["requests_restarted"]
    for i, status in enumerate(req["status"]):
        if status == "completed":
            assert req["arrival_s"][i] <= req["scheduled_s"][i] < req["first_token_s"][i] <= req["finish_s"][i]
            assert req["cached_tokens"][i] < req["prompt_tokens"][i]
    if caching:
        assert 0.0 <= summary["prefix_cache"]["hit_rate"] <= 1.0
    if preemption == "swap":
        s = summary["swap"]
        assert s["swapped_out"] + s["recomputed"] == summary["requests"]["preemptions"]


def test_step_time_budget_caps_prompt_tokens_joining_decodes():
    """``scheduler.step_time_budget_s``: with a step cost of 1 ms per token and a 40 ms budget,
    prompt chunks join the decodes only up to 40 tokens in all; a step of decodes alone (or a
    first chunk with nothing else to run) is never held back."""
    import numpy as np

    from sim.policy.batching import ContinuousBatcher, SchedulerConfig
    from sim.policy.kv_cache import KVBlockPool
    from sim.policy.requests import RequestStore

    cfg = SchedulerConfig(max_tokens_per_step=512, step_time_budget_s=0.04)
    prompt, output = np.array([100, 100, 100]), np.array([5, 5, 5])
    b = ContinuousBatcher(cfg, KVBlockPool(1000, 16), RequestStore.of(np.zeros(3), prompt, output),
                          step_s=lambda shape: 1e-3 * shape.new_tokens)
    for r in range(3):
        b.add(r)
    first = b.plan()
    assert [w.new_tokens for w in first.work] == [100]          # alone: never held back
    b.complete(first)
    second = b.plan()
    assert second.batch.new_tokens == 40 and second.work[0].new_tokens == 1   # 1 decode + 39 prompt tokens
    with pytest.raises(ConfigError, match="step-time model"):
        ContinuousBatcher(cfg, KVBlockPool(10, 16), RequestStore.of(np.zeros(1), prompt[:1], output[:1]))
    with pytest.raises(ConfigError, match="scheduler.step_time_budget_s"):
        SchedulerConfig(step_time_budget_s=0)


def test_step_time_budget_trades_ttft_for_tpot_in_a_run():
    base = ["workload=synthetic", "workload.max_requests=300", "workload.rate_per_s=40", "workload.prompt_tokens=2000",
            "workload.output_tokens=100", "model=llama3_8b", "parallel.tp=1", "scheduler.max_tokens_per_step=8192",
            "output.progress=never", "output.write_parquet=false", "debug.check_invariants=true"]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        free = run(compose_config(base), Path(a))
        capped = run(compose_config(base + ["scheduler.step_time_budget_s=0.03"]), Path(b))
    assert capped["requests"]["completed"] == free["requests"]["completed"] == 300
    assert capped["tpot_s"]["p99"] < free["tpot_s"]["p99"]
    assert capped["ttft_s"]["mean"] > free["ttft_s"]["mean"]


def test_prompt_chunks_are_never_cut_below_the_token_budget_under_kv_pressure():
    """Without speculation or a time budget, a prompt chunk is all its pending prompt or all the
    step's remaining tokens: KV pressure preempts or waits, it never shrinks a chunk (the draft
    tree's chain fallback applies to verification only)."""
    import numpy as np

    from sim.policy.batching import ContinuousBatcher, SchedulerConfig
    from sim.policy.kv_cache import KVBlockPool
    from sim.policy.requests import RequestStore

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        n = int(rng.integers(2, 5))
        prompt, output = rng.integers(10, 200, n), rng.integers(2, 150, n)
        blocks = int(rng.integers(8, 30))
        if (prompt + output).max() > blocks * 16:
            continue
        cfg = SchedulerConfig(max_tokens_per_step=int(rng.choice([32, 64, 128])))
        b = ContinuousBatcher(cfg, KVBlockPool(blocks, 16), RequestStore.of(np.zeros(n), prompt, output))
        for r in range(n):
            b.add(r)
        for _ in range(3000):
            p = b.plan()
            if p is None:
                break
            left = cfg.max_tokens_per_step
            for w in p.work:
                pending = prompt[w.request] + b.generated[w.request] - w.context
                if pending > 1:
                    assert w.new_tokens == min(pending, left), (w, left)
                    checked += 1
                left -= w.new_tokens
            b.complete(p)
    assert checked > 100


def test_step_time_budget_counts_decodes_planned_after_a_prompt_chunk():
    """With ``policy=priority`` a prompt chunk may come before the decodes in the running
    order; the budget still counts the decodes that will join the step."""
    import numpy as np

    from sim.policy.batching import ContinuousBatcher, SchedulerConfig
    from sim.policy.kv_cache import KVBlockPool
    from sim.policy.requests import RequestStore

    cfg = SchedulerConfig(policy="priority", max_tokens_per_step=512, step_time_budget_s=0.04, chunked_prefill=True)
    prompt, output = np.array([10, 10, 10, 300]), np.array([50, 50, 50, 5])
    store = RequestStore.of(np.zeros(4), prompt, output)
    for r, level in enumerate([1, 1, 1, 0]):  # the long prompt is the most urgent
        store.priority[r] = level
    b = ContinuousBatcher(cfg, KVBlockPool(1000, 16), store, step_s=lambda shape: 1e-3 * shape.new_tokens)
    for r in range(3):
        b.add(r)
    b.complete(b.plan())                       # the three short prompts: decoding from now on
    b.add(3)
    b.complete(b.plan())                       # three decodes + the first 37 tokens of the long prompt
    p = b.plan()                               # the long prompt sorts first, the decodes join after it
    assert p.batch.new_tokens <= 40 and sum(w.new_tokens == 1 for w in p.work) == 3
