"""Queueing theory the simulator must reproduce.

* M/D/1: one replica serving one request per step (batch limit 1, one output token, every
  prompt the same length, so every step takes the same time D) under Poisson arrivals at
  rate lambda is an M/D/1 queue. Its mean wait before service is Pollaczek-Khinchine's
  ``W_q = rho D / (2 (1 - rho))`` with ``rho = lambda D``; a request's TTFT is its wait plus D.
  The simulated mean wait must lie within the 99 % confidence interval of batch means.
* Little's law: the time-average number of requests in the system, read from the step table
  (each step's batch plus the queue behind it, weighted by the step's duration), equals the
  arrival rate times the mean time in system (``sum(e2e) / T``) within 2 %, on several
  configurations (continuous batching, data parallelism, chunked prefill).
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim.app import run
from sim.config.compose import compose_config

BASE = ["workload=synthetic", "model=llama3_8b", "parallel.tp=1", "output.progress=never", "seed=3"]


def _tables(overrides: list[str], out):
    summary = run(compose_config([*BASE, *overrides]), out)
    return summary, pq.read_table(out / "requests.parquet"), pq.read_table(out / "steps.parquet")


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_single_replica_with_fixed_step_time_is_an_md1_queue(tmp_path, rho):
    # the step time D of one 512-token prompt, measured from a one-request run
    _, _, steps = _tables(["workload.max_requests=1", "workload.prompt_tokens=512", "workload.output_tokens=1"],
                          tmp_path / "probe")
    d = float(steps.column("duration_s")[0].as_py())
    rate = rho / d
    n = 60_000
    _, req, steps = _tables([f"workload.max_requests={n}", f"workload.rate_per_s={rate}",
                             "workload.prompt_tokens=512", "workload.output_tokens=1",
                             "scheduler.max_batch_size=1"], tmp_path / "run")
    durations = steps.column("duration_s").to_numpy()
    assert np.allclose(durations, d, rtol=1e-12)                  # deterministic service
    assert set(steps.column("batch_size").to_pylist()) == {1}
    wait = req.column("ttft_s").to_numpy() - d
    expected = rho * d / (2 * (1 - rho))
    batches = wait[n // 10:].reshape(20, -1).mean(axis=1)        # warm-up dropped, 20 batch means
    half_width = 2.861 * batches.std(ddof=1) / np.sqrt(len(batches))   # t(0.995, 19)
    assert abs(batches.mean() - expected) <= half_width, (batches.mean(), expected, half_width)
    assert half_width < 0.2 * expected                           # and the interval is tight enough to tell


@pytest.mark.parametrize("extra", [
    ["workload.rate_per_s=8"],
    ["workload.rate_per_s=30", "parallel.dp=2"],
    ["workload.rate_per_s=12", "scheduler.max_tokens_per_step=256", "scheduler.chunked_prefill=true"],
])
def test_littles_law_holds_on_the_step_table(tmp_path, extra):
    _, req, steps = _tables(["workload.max_requests=3000", "workload.prompt_tokens={dist: lognormal, median: 300, "
                             "sigma: 0.8, min: 1, max: 3000}", "workload.output_tokens={dist: lognormal, median: 60, "
                             "sigma: 0.8, min: 1, max: 600}", *extra], tmp_path)
    in_system = (steps.column("batch_size").to_numpy() + steps.column("waiting").to_numpy())
    area_steps = float((in_system * steps.column("duration_s").to_numpy()).sum())
    area_requests = float(req.column("e2e_s").to_numpy().sum())    # = lambda x mean time in system x T
    assert area_steps == pytest.approx(area_requests, rel=0.02)
