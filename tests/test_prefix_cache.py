"""Prefix caching (``scheduler.prefix_caching=true``, issue 13).

Rules checked: on the bundled Mooncake trace the hit rate is exactly what a perfect cache
gets when nothing is evicted, and what an LRU cache of the same capacity gets on the whole
trace (the evictions it reports explain the gap to a perfect cache); caching lowers TTFT; the
pool conserves blocks with shared prefixes and frees a cached block only when no request
references it (property test); fast-forwarded and stepped runs record the same tables; the
requests table reports each request's cached tokens.
"""
from __future__ import annotations

import json
from collections import OrderedDict

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import ROOT, assert_same_tables, run_sim

from sim.policy.kv_cache import KVBlockPool

TRACE = ROOT / "workloads" / "data" / "mooncake_synthetic.jsonl"
UNIT = 512


def _trace(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def _offline_hit_rate(rows: list[dict], capacity_units: float) -> float:
    """Prompt tokens a cache of ``capacity_units`` units (LRU; inf: perfect) would serve, one
    request after another, over the prompt tokens looked up."""
    lru: OrderedDict[tuple, None] = OrderedDict()
    hit = looked = 0
    for d in rows:
        ids, prompt = d["hash_ids"], d["input_length"]
        keys = [tuple(ids[:i + 1]) for i in range(len(ids))]
        h = 0
        for k in keys[:(prompt - 1) // UNIT]:
            if k not in lru:
                break
            h += 1
        hit += h * UNIT
        looked += prompt
        for k in keys[:prompt // UNIT]:
            lru[k] = None
            lru.move_to_end(k)
        while len(lru) > capacity_units:
            lru.popitem(last=False)
    return hit / looked


def _run(tmp_path, name: str, *overrides: str):
    out = tmp_path / name
    proc = run_sim("-m", "sim", f"hydra.run.dir={out}", "output.progress=never", "workload=mooncake_synthetic",
                   "debug.check_invariants=true", *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "summary.json").read_text())


def test_without_evictions_the_hit_rate_is_a_perfect_caches(tmp_path):
    out, s = _run(tmp_path, "small", "workload.max_requests=400", "workload.rate_scale=0.2", "model=llama3_8b",
                  "scheduler.prefix_caching=true")
    pc = s["prefix_cache"]
    perfect = _offline_hit_rate(_trace(400), float("inf"))
    assert perfect > 0.05
    assert pc["hit_rate"] == pytest.approx(perfect, abs=0.003) and pc["hit_rate"] <= perfect + 1e-12
    req = pq.read_table(out / "requests.parquet").to_pydict()
    assert sum(req["cached_tokens"]) == pc["hit_tokens"]        # no preemption: one lookup a request
    assert all(c % UNIT == 0 and c < p for c, p in zip(req["cached_tokens"], req["prompt_tokens"]))


def test_the_whole_trace_matches_an_lru_cache_of_the_same_capacity_and_lowers_ttft(tmp_path):
    _, on = _run(tmp_path, "on", "workload.rate_scale=0.3", "scheduler.prefix_caching=true")
    _, off = _run(tmp_path, "off", "workload.rate_scale=0.3")
    pc = on["prefix_cache"]
    units = on["memory"]["kv_capacity_tokens_per_replica"] // UNIT
    rows = _trace()
    lru, perfect = _offline_hit_rate(rows, units), _offline_hit_rate(rows, float("inf"))
    assert pc["evictions"] > 0 and pc["hit_rate"] < perfect - 0.3        # a 1.3 M-token cache evicts
    assert pc["hit_rate"] == pytest.approx(lru, abs=0.01)
    assert "prefix_cache" not in off and on["ttft_s"]["p50"] < 0.8 * off["ttft_s"]["p50"]


def test_fast_forward_and_stepping_agree_with_prefix_caching_under_kv_pressure(tmp_path):
    common = ["workload.max_requests=250", "model=llama3_8b", "parallel.tp=1", "engine.gpu_memory_utilization=0.5",
              "scheduler.prefix_caching=true", "workload.rate_scale=0.5"]
    a, sa = _run(tmp_path, "ff", *common)
    b, sb = _run(tmp_path, "step", *common, "sim.fast_forward=false")
    assert sa["prefix_cache"]["evictions"] > 0 and sa["prefix_cache"] == sb["prefix_cache"]
    assert_same_tables(a, b)


def test_prefix_caching_without_prefix_ids_is_one_line(tmp_path):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'x'}", "scheduler.prefix_caching=true")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: scheduler.prefix_caching=true needs a trace with prefix block ids")


# ----- the pool alone -----------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(total=st.integers(4, 60), unit_blocks=st.sampled_from([1, 2, 4]), data=st.data())
def test_pool_conserves_blocks_and_never_reclaims_a_referenced_prefix(total, unit_blocks, data):
    block = 4
    unit = unit_blocks * block
    pool = KVBlockPool(total, block, unit)
    live: dict[int, tuple[list[int], int]] = {}
    next_id = 0

    def check() -> None:
        held = sum(pool.held.values())
        assert pool.free_blocks + held + pool.referenced_blocks() == total
        assert 0 <= pool.evictable_blocks <= pool.free_blocks and min(pool.held.values(), default=0) >= 0
        for r, units in pool.shared.items():          # a referenced unit is still cached ...
            assert r in live and all(pool._refs.get(u, 0) >= 1 for u in units)
            parents = [pool._key[u][0] for u in units]  # ... and a request references a chain from its root
            assert parents == [-1, *units[:-1]]
        assert all(v >= 0 for v in pool._refs.values())

    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(["admit", "admit", "finish", "free"]))
        if op == "admit":
            ids = data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=5))
            prompt = data.draw(st.integers(1, len(ids) * unit))
            hits = pool.cached_prefix(ids, prompt)
            cached = len(hits) * unit
            need = pool.blocks_for(prompt) - len(hits) * unit_blocks + pool.evictable_among(hits)
            if need > pool.free_blocks:
                continue
            r = next_id
            next_id += 1
            assert pool.reference(r, hits, prompt) == cached < prompt
            assert pool.grow(r, prompt)
            live[r] = (ids, prompt)
        elif live:
            r = data.draw(st.sampled_from(sorted(live)))
            ids, prompt = live[r]
            if op == "finish":
                pool.insert(r, ids, prompt)
                assert pool.blocks_held(r) == pool.blocks_for(prompt)
            pool.free(r)
            del live[r]
        check()
    for r in list(live):
        pool.free(r)
    check()
    assert pool.free_blocks == total and pool.evictable_blocks == pool.cached_units * unit_blocks


# ----- routing ------------------------------------------------------------------------------

def test_prefix_aware_routing_over_four_replicas_hits_more_than_round_robin(tmp_path):
    common = ["parallel.dp=4", "topology=multi_node_ib", "scheduler.prefix_caching=true"]
    _, rr = _run(tmp_path, "rr", *common, "parallel.router=round_robin")
    _, pa = _run(tmp_path, "pa", *common, "parallel.router=prefix_aware")
    assert pa["prefix_cache"]["hit_rate"] > 2 * rr["prefix_cache"]["hit_rate"] > 0
    assert pa["ttft_s"]["p50"] < rr["ttft_s"]["p50"]


def test_prefix_aware_routing_fast_forwards_exactly(tmp_path):
    common = ["workload.max_requests=300", "model=llama3_8b", "parallel.tp=1", "parallel.dp=3",
              "scheduler.prefix_caching=true", "parallel.router=prefix_aware", "engine.gpu_memory_utilization=0.5"]
    a, sa = _run(tmp_path, "ff", *common)
    b, sb = _run(tmp_path, "step", *common, "sim.fast_forward=false")
    assert sa["prefix_cache"] == sb["prefix_cache"]
    assert_same_tables(a, b)
    assert len(set(pq.read_table(a / "requests.parquet").column("replica").to_pylist())) == 3


def test_prefix_aware_without_prefix_caching_is_one_line(tmp_path):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'x'}", "workload=mooncake_synthetic",
                   "parallel.router=prefix_aware")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "parallel.router=prefix_aware" in proc.stderr and "scheduler.prefix_caching=true" in proc.stderr


def test_a_plain_trace_shares_prefixes_by_prefix_group(tmp_path):
    """Turns of one conversation (prefix_group 7) reuse the earlier turns' whole 512-token
    units; a request without a group, or of another group, shares nothing."""
    trace = tmp_path / "conv.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens,prefix_group\n"
                     "0,1100,20,7\n20,1700,20,7\n40,2300,20,7\n41,2300,20,\n42,2300,20,8\n")
    out = tmp_path / "run"
    proc = run_sim("-m", "sim", f"hydra.run.dir={out}", "output.progress=never", f"workload.path={trace}",
                   "model=llama3_8b", "parallel.tp=1", "scheduler.prefix_caching=true", "debug.check_invariants=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    req = pq.read_table(out / "requests.parquet").to_pydict()
    assert req["cached_tokens"] == [0, 1024, 1536, 0, 0]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens,prefix_group\n0,10,2,x\n")
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'b'}", f"workload.path={bad}")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: bad.csv line 2: prefix_group='x' is not a non-negative integer"


def test_a_request_finding_its_prefix_cached_meanwhile_references_it():
    """S caches [a]; R, admitted before that, computes [a, b]: R then references S's unit a
    (its own copy freed) and its new unit b, so evicting a while R holds b cannot happen."""
    pool = KVBlockPool(8, 4, 4)
    assert pool.reference(0, [], 5) == 0 and pool.grow(0, 5)       # S: prompt of 5, one whole unit
    assert pool.reference(1, [], 9) == 0 and pool.grow(1, 9)       # R, before S's prompt is cached
    pool.insert(0, [10], 5)
    pool.insert(1, [10, 20], 9)
    a, b = pool.shared[1]
    assert pool.shared[0] == [a] and pool._refs[a] == 2 and pool._key[b] == (a, 20)
    assert pool.free_blocks + sum(pool.held.values()) + pool.referenced_blocks() == 8
    pool.free(0)
    pool.grow(2, 4 * 4)                 # pressure: only unreferenced units could go, and none is
    assert pool.cached_prefix([10, 20, 30], 13) == [a, b]
