"""Preemption by swapping KV to host memory (``scheduler.preemption=swap``, issue 13).

Rules checked: a swapped request keeps its computed positions (nothing is recomputed: the
prefill tokens of the steps equal the prompts exactly, unlike recomputation); the copies take
``2 x layers`` host-link latencies plus bytes over the PCIe bandwidth each way, paid in the
step's ``network_s``; without host space every preemption falls back to recomputation; host
blocks are conserved (run-time invariant on); fast-forwarding changes nothing.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_tables, run_sim

from sim.cost.memory import host_copy_s, swap_time_s

TIGHT = ["model=llama3_8b", "parallel.tp=1", "engine.gpu_memory_utilization=0.23", "workload=synthetic",
         "workload.rate_per_s=40", "workload.max_requests=80", "debug.check_invariants=true"]


def _run(tmp_path, name, *overrides):
    out = tmp_path / name
    proc = run_sim("-m", "sim", f"hydra.run.dir={out}", "output.progress=never", *TIGHT, *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (pq.read_table(out / "requests.parquet").to_pydict(), pq.read_table(out / "steps.parquet").to_pydict(),
            json.loads((out / "summary.json").read_text()))


def test_host_copies_pay_a_latency_per_layer_and_the_bytes_over_pcie():
    # llama3_8b on one H100: 32 layers, 131,072 bytes of KV per token, 16-token blocks
    block = 16 * 131072
    one = swap_time_s(1, 0, block, 32, 1e-6, 64e9)
    assert one == pytest.approx(64e-6 + block / 64e9)
    assert 64e-6 > block / 64e9                   # one block: the 64 copy latencies cost more than its bytes
    assert swap_time_s(100, 100, block, 32, 1e-6, 64e9) == pytest.approx(2 * (64e-6 + 100 * block / 64e9))
    assert host_copy_s(0, 64, 1e-6, 64e9) == 0.0 and swap_time_s(0, 0, block, 32, 1e-6, 64e9) == 0.0


def test_swapped_requests_are_never_recomputed(tmp_path):
    req, steps, s = _run(tmp_path, "swap", "scheduler.preemption=swap")
    rreq, rsteps, rs = _run(tmp_path, "recompute")
    done = np.array(req["status"]) == "completed"
    assert s["swap"]["swapped_out"] == s["swap"]["swapped_in"] == s["requests"]["preemptions"] > 0
    assert s["swap"]["recomputed"] == 0 and "swap" not in rs
    prompt, output = np.array(req["prompt_tokens"])[done], np.array(req["output_tokens"])[done]
    assert sum(steps["prefill_tokens"]) == prompt.sum()                       # nothing recomputed
    assert sum(steps["decode_tokens"]) + done.sum() == output.sum()
    assert sum(rsteps["prefill_tokens"]) > np.array(rreq["prompt_tokens"])[np.array(rreq["status"]) == "completed"].sum()
    # tp=1: no collective, so network time is the swaps' host copies, on the steps that swapped
    assert sum(rsteps["network_s"]) == 0.0 and sum(steps["network_s"]) > 0.0
    assert np.count_nonzero(steps["network_s"]) <= s["swap"]["swapped_out"] + s["swap"]["swapped_in"]


def test_without_host_space_preemption_recomputes(tmp_path):
    _, steps, s = _run(tmp_path, "nospace", "scheduler.preemption=swap", "scheduler.swap_space_GB=0")
    assert s["swap"]["swapped_out"] == 0 and s["swap"]["recomputed"] == s["requests"]["preemptions"] > 0


def test_swapping_fast_forwards_exactly(tmp_path):
    a = _run(tmp_path, "ff", "scheduler.preemption=swap")
    b = _run(tmp_path, "step", "scheduler.preemption=swap", "sim.fast_forward=false")
    assert a[2]["swap"] == b[2]["swap"]
    assert_same_tables(tmp_path / "ff", tmp_path / "step")


def test_a_bad_preemption_mode_is_one_line(tmp_path):
    proc = run_sim("-m", "sim", f"hydra.run.dir={tmp_path / 'x'}", "scheduler.preemption=offload")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: scheduler.preemption='offload' is not one of ['recompute', 'swap']")
