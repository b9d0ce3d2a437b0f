"""Request priorities (issue 13): a trace's ``priority`` column (lower first, vLLM's
convention) orders admission under ``scheduler.policy=priority`` and picks the preemption
victim (the lowest priority, latest arrival); ``fcfs`` ignores it. Admission stays FIFO within
a priority class (the run-time invariant is on in these runs)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_sim

from workloads import WorkloadError
from workloads.trace_readers import read_trace


def _trace(path, rows) -> None:
    path.write_text("arrival_s,prompt_tokens,output_tokens,priority\n" + "".join(f"{a},{p},{o},{q}\n" for a, p, o, q in rows))


def _run(tmp_path, name, trace, *overrides):
    out = tmp_path / name
    proc = run_sim("-m", "sim", f"hydra.run.dir={out}", "output.progress=never", f"workload.path={trace}",
                   "model=llama3_8b", "parallel.tp=1", "debug.check_invariants=true", *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return pq.read_table(out / "requests.parquet").to_pydict(), json.loads((out / "summary.json").read_text())


def test_readers_keep_priorities_and_refuse_bad_ones(tmp_path):
    good = tmp_path / "t.csv"
    _trace(good, [(0.0, 10, 5, 3), (0.5, 10, 5, -1), (0.2, 10, 5, 0)])
    t = read_trace(good)
    assert t.priority.tolist() == [3, 0, -1]           # sorted by arrival with the rows
    assert t.to_arrow().column("priority").to_pylist() == [3, 0, -1]
    bad = tmp_path / "bad.csv"
    _trace(bad, [(0.0, 10, 5, "high")])
    with pytest.raises(WorkloadError, match=r"bad.csv line 2: priority='high' is not an integer"):
        read_trace(bad)
    moon = tmp_path / "m.jsonl"
    moon.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2, "hash_ids": [1], "priority": 2}\n'
                    '{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": [1]}\n')
    assert read_trace(moon).priority.tolist() == [2, 0]


def test_priority_policy_serves_the_urgent_class_first(tmp_path):
    # 60 long background requests, then 20 urgent ones arriving while the queue is full
    rows = [(0.001 * i, 3000, 200, 1) for i in range(60)] + [(0.1 + 0.001 * i, 200, 20, 0) for i in range(20)]
    trace = tmp_path / "burst.csv"
    _trace(trace, rows)
    tight = ["scheduler.max_batch_size=8"]
    fcfs, _ = _run(tmp_path, "fcfs", trace, *tight)
    prio, s = _run(tmp_path, "prio", trace, *tight, "scheduler.policy=priority")
    assert s["requests"]["completed"] == 80 and prio["priority"] == [1] * 60 + [0] * 20
    urgent = slice(60, 80)
    assert np.median(prio["ttft_s"][urgent]) < 0.2 * np.median(fcfs["ttft_s"][urgent])
    # within the urgent class, still first come first served
    sched = prio["scheduled_s"][urgent]
    assert sched == sorted(sched)


@pytest.mark.parametrize("policy,victim", [("fcfs", 1), ("priority", 0)])
def test_the_victim_is_the_lowest_priority_not_the_latest_admitted(policy, victim):
    """B (priority 1) runs first, A (priority 0) joins; when the pool runs dry, fcfs preempts
    the latest admitted (A), priority the lowest priority (B)."""
    from sim.policy.batching import ContinuousBatcher, SchedulerConfig
    from sim.policy.kv_cache import KVBlockPool
    from sim.policy.requests import RequestStore

    store = RequestStore.of(np.zeros(2), np.array([60, 60]), np.array([200, 200]))
    store.priority[0], store.priority[1] = 1, 0
    b = ContinuousBatcher(SchedulerConfig(policy=policy), KVBlockPool(10, 16), store)
    b.add(0)
    b.complete(b.plan())
    b.add(1)
    for _ in range(200):
        plan = b.plan()
        if plan.preempted:
            assert plan.preempted == [victim]
            return
        b.complete(plan)
    raise AssertionError("no preemption")


def test_an_unknown_policy_is_one_line(tmp_path):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'x'}", "scheduler.policy=continuous")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: scheduler.policy='continuous' is not one of ['fcfs', 'priority']")
