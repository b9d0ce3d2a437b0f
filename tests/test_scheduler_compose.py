"""Every scheduler option composes with every other (issue 13's features together): random
combinations of admission policy, preemption mode, prefix caching, chunking, block size,
router, data and pipeline parallelism, speculative decoding and KV pressure on the Mooncake
trace, each run with the run-time invariants on (once, monotonic times, KV and host blocks
conserved, shared prefixes reclaimed only when unreferenced, budgets, FIFO per priority);
afterwards every request has completed or been rejected exactly once."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyarrow.parquet as pq

from sim.app import run
from sim.config.compose import compose_config


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["fcfs", "priority"]), preemption=st.sampled_from(["recompute", "swap"]),
       caching=st.booleans(), chunked=st.booleans(), block=st.sampled_from([16, 32]),
       router=st.sampled_from(["round_robin", "least_outstanding_tokens", "least_outstanding_tokens_oracle",
                               "prefix_aware"]),
       dp=st.integers(1, 3), pp=st.sampled_from([1, 2]), speculative=st.booleans(),
       util=st.sampled_from([0.3, 0.9]), n=st.integers(5, 60), rate=st.sampled_from([0.5, 2.0]),
       fast_forward=st.booleans())
def test_scheduler_options_compose(policy, preemption, caching, chunked, block, router, dp, pp, speculative,
                                   util, n, rate, fast_forward):
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
    with tempfile.TemporaryDirectory() as d:
        summary = run(compose_config(over), Path(d))
        req = pq.read_table(Path(d) / "requests.parquet").to_pydict()
    assert summary["complete"] and req["request_id"] == list(range(n))
    assert summary["requests"]["completed"] + summary["requests"]["rejected"] == n
    assert set(req["status"]) <= {"completed", "rejected"}
    for i, status in enumerate(req["status"]):
        if status == "completed":
            assert req["arrival_s"][i] <= req["scheduled_s"][i] < req["first_token_s"][i] <= req["finish_s"][i]
            assert req["cached_tokens"][i] < req["prompt_tokens"][i]
    if caching:
        assert 0.0 <= summary["prefix_cache"]["hit_rate"] <= 1.0
    if preemption == "swap":
        s = summary["swap"]
        assert s["swapped_out"] + s["recomputed"] == summary["requests"]["preemptions"]
