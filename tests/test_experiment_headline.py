"""Headline experiment ``headline`` (issue 16), first part: a decoding token's time in five parts
as tensor parallelism spreads a model over 8 to 32 H100s, and what latency and bandwidth buy.

Rules (the step-time model on 8, 16 and 32 GPUs; the regime map and the notebook also simulate):
* the five parts add up to the step, and the per-request speed is one token per step;
* inside one node the network is a small part; across nodes its latency part is the largest part
  of the batch-1 step and grows with the node count, while its bandwidth part stays small;
* so the speed stops growing past one node (TP16 slower than TP8 for both models);
* halving per-message latency cuts the batch-1 step across nodes by far more than 10x bandwidth,
  and by about the latency part's half;
* a larger batch moves the step towards HBM traffic (and, for the MoE, more experts read).
"""
from __future__ import annotations

import pytest

from sim.experiments import headline

GPUS = headline.QUICK_GPU_COUNTS


@pytest.fixture(scope="module")
def parts():
    return headline.breakdown(GPUS).to_pylist()


@pytest.fixture(scope="module")
def swept():
    return headline.sweeps(GPUS).to_pylist()


def _row(rows, model, gpus, batch):
    return next(r for r in rows if r["model"] == model and r["gpus"] == gpus and r["batch"] == batch)


def test_parts_add_up_to_the_step(parts):
    assert {r["model"] for r in parts} == set(headline.MODELS)
    for r in parts:
        total = r["compute_s"] + r["memory_s"] + r["network_latency_s"] + r["network_bandwidth_s"] + r["fixed_s"]
        assert total == pytest.approx(r["step_s"], rel=1e-12)
        assert r["tokens_per_s"] == pytest.approx(1.0 / r["step_s"])
        assert min(r["network_latency_s"], r["network_bandwidth_s"]) >= 0.0


def test_latency_takes_over_across_nodes_and_the_speed_stops_growing(parts):
    for model in headline.MODELS:
        one, two, four = (_row(parts, model, g, 1) for g in GPUS)
        assert one["network_latency_s"] < 0.25 * one["step_s"]
        for r in (two, four):
            assert r["network_latency_s"] > max(r["memory_s"], r["compute_s"], r["fixed_s"], r["network_bandwidth_s"])
        assert four["network_latency_s"] > two["network_latency_s"]
        for r in (one, two, four):
            assert r["network_bandwidth_s"] < 0.1 * r["network_latency_s"] + 1e-4
        assert four["tokens_per_s"] < two["tokens_per_s"] < one["tokens_per_s"]
        assert four["memory_s"] < one["memory_s"]                   # the weights are spread thinner all the same


def test_halving_latency_beats_ten_times_bandwidth_across_nodes(swept, parts):
    for model in headline.MODELS:
        for gpus in GPUS:
            change = {(r["swept"], r["scale"]): r["change"] for r in swept if r["model"] == model and r["gpus"] == gpus}
            assert change[("latency", 1.0)] == 0.0 and change[("bandwidth", 1.0)] == 0.0
            assert change[("latency", 0.5)] < change[("bandwidth", 10.0)] <= 0.0
            assert change[("latency", 2.0)] > 0.0
            if gpus > 8:
                r = _row(parts, model, gpus, 1)
                # about half of the latency part (NCCL may switch protocol, so not exactly)
                assert -change[("latency", 0.5)] == pytest.approx(0.5 * r["network_latency_s"] / r["step_s"], rel=0.15)
                assert change[("latency", 0.5)] < -0.15 and change[("bandwidth", 10.0)] > -0.01


def test_a_larger_batch_reads_more(parts):
    for model in headline.MODELS:
        small, big = _row(parts, model, 8, 1), _row(parts, model, 8, 64)
        assert big["memory_s"] > small["memory_s"] and big["step_s"] > small["step_s"]
    moe_growth = _row(parts, "Qwen3-235B-A22B (MoE)", 8, 64)["memory_s"] / _row(parts, "Qwen3-235B-A22B (MoE)", 8, 1)["memory_s"]
    dense_growth = _row(parts, "Llama-3-70B", 8, 64)["memory_s"] / _row(parts, "Llama-3-70B", 8, 1)["memory_s"]
    assert moe_growth > 3 * dense_growth          # a batch of 64 reads most of the 128 experts; a dense model its KV


@pytest.fixture(scope="module")
def spec():
    return headline.speculation((8, 16), (1, 64, 256)).to_pylist()


def _spec(rows, placement, gpus, batch):
    return next(r for r in rows if r["placement"] == placement and r["gpus"] == gpus and r["batch"] == batch)


HEADS, SHARDED, OWN = headline.PLACEMENTS


def test_speculation_divides_latency_and_fixed_costs_by_the_tokens_per_pass(spec):
    """Draft heads: the per-message latency and launch costs paid once per pass are shared by
    the ~3.4 tokens a pass yields (a = 0.8, gamma = 4), less the heads' own small share."""
    for gpus in (8, 16):
        r = _spec(spec, HEADS, gpus, 1)
        assert r["tokens_per_pass"] == pytest.approx((1 - 0.8 ** 5) / 0.2)
        plain = r["plain_network_latency_s"] + r["plain_fixed_s"]
        per_token = r["spec_network_latency_s"] + r["spec_fixed_s"]
        assert 1.0 <= per_token * r["tokens_per_pass"] / plain < 1.3
        assert r["speedup"] > 2.5


def test_what_grows_with_the_verified_tokens_is_not_amortized(spec):
    """At batch 64 the verification pass's arithmetic (gamma + 1 tokens per sequence) is no
    longer hidden under the weight reads: compute per token grows with speculation."""
    r = _spec(spec, HEADS, 8, 64)
    assert r["spec_compute_s"] > 10 * r["plain_compute_s"]
    for placement in headline.PLACEMENTS:
        gains = [r["speedup"] for r in sorted((r for r in spec if r["placement"] == placement and r["gpus"] == 8),
                                              key=lambda r: r["batch"])]
        assert len(gains) >= 2 and all(a > b for a, b in zip(gains, gains[1:])), placement
    # a draft on its own GPU cannot hold 256 sequences' KV beside its weights: no row, not a number
    assert not any(r["placement"] == OWN and r["batch"] == 256 for r in spec)
    assert _spec(spec, SHARDED, 8, 256)["speedup"] < 1.0 < _spec(spec, HEADS, 8, 256)["speedup"]


def test_how_the_gain_depends_on_latency_for_each_placement():
    """Across two nodes: the sharded 8B draft pays the network on every drafted token (its own
    all-reduces), so more latency shrinks its gain; the draft on its own GPU drafts without the
    network, so more latency raises its gain; the heads' gain barely moves."""
    gain = {ls: {r["placement"]: r["speedup"] for r in headline.speculation((16,), (1,), ls).to_pylist()}
            for ls in (0.5, 2.0)}
    assert gain[2.0][SHARDED] < gain[0.5][SHARDED]
    assert gain[2.0][OWN] > gain[0.5][OWN] + 0.3
    assert gain[2.0][HEADS] == pytest.approx(gain[0.5][HEADS], rel=0.05)


def test_regime_map_on_the_azure_trace():
    """Replayed at 0.05x its rate the trace decodes small batches: across nodes the network's
    per-message latency is the largest part, far above its bandwidth part; inside one node HBM.
    At 4x, inside one node, long prefill chunks make arithmetic the largest part and the
    network's bandwidth part outweighs its latency part."""
    rows = {(r["rate_scale"], r["gpus"]): r for r in headline.regime_map((0.05, 4.0), (8, 16), 600).to_pylist()}
    for r in rows.values():
        shares = [r[k] for k in ("compute_share", "memory_share", "network_latency_share", "network_bandwidth_share",
                                 "fixed_share")]
        assert sum(shares) == pytest.approx(1.0) and min(shares) >= 0.0
    low_far, low_near, high_near = rows[(0.05, 16)], rows[(0.05, 8)], rows[(4.0, 8)]
    assert low_far["regime"] == "network_latency"
    assert low_far["network_latency_share"] > 2 * low_far["network_bandwidth_share"]
    assert low_near["regime"] == "memory"
    assert high_near["regime"] in ("compute", "network_bandwidth")
    assert high_near["network_bandwidth_share"] > high_near["network_latency_share"]
    assert high_near["tpot_p50_s"] > 3 * low_near["tpot_p50_s"]         # prefill chunks share the decode steps


def test_notebook_runs_quick_and_bands_hold_the_directions(tmp_path, monkeypatch):
    from helpers import execute_notebook

    import pyarrow.parquet as pq

    execute_notebook("headline", tmp_path, monkeypatch)
    assert (tmp_path / "headline.png").stat().st_size > 30_000
    # the notebook's own small run holds the README's directions
    regimes = {(r["rate_scale"], r["gpus"]): r for r in pq.read_table(tmp_path / "headline_regimes.parquet").to_pylist()}
    far_low, near_high = regimes[(0.05, 16)], regimes[(4.0, 8)]
    assert far_low["network_latency_share"] > far_low["network_bandwidth_share"]        # across nodes, low load
    assert near_high["regime"] in ("compute", "network_bandwidth")                     # one node, high load
    assert near_high["network_bandwidth_share"] > near_high["network_latency_share"]
    spec = pq.read_table(tmp_path / "headline_speculation.parquet").to_pylist()
    heads = next(r for r in spec if r["placement"] == HEADS and r["gpus"] == 16 and r["batch"] == 1)
    once = heads["plain_network_latency_s"] + heads["plain_fixed_s"]
    assert once / (heads["spec_network_latency_s"] + heads["spec_fixed_s"]) == pytest.approx(heads["tokens_per_pass"],
                                                                                             rel=0.25)
    rows = {r["number"]: r for r in pq.read_table(tmp_path / "headline_bands.parquet").to_pylist()}
    for r in rows.values():
        assert r["low"] <= r["median"] <= r["high"]
    # the directions hold across the band, not only at its centre
    assert rows["70B step change with half the latency, 16 GPUs"]["high"] < \
        rows["70B step change with 10x the bandwidth, 16 GPUs"]["low"]
    assert rows["network latency share, 0.05x, 16 GPUs"]["low"] > 0.25   # the largest part (quick: 400 requests)
    assert rows["70B tokens/s, batch 1, 16 GPUs"]["high"] < rows["70B tokens/s, batch 1, 8 GPUs"]["low"]


def test_the_readme_numbers(parts, swept, spec):
    """The README's findings, pinned (full-run values; the quick grid holds 8-32 GPUs)."""
    tok = {(r["model"], r["gpus"], r["batch"]): r["tokens_per_s"] for r in parts}
    assert tok[("Llama-3-70B", 8, 1)] == pytest.approx(107.1, abs=0.1)
    assert tok[("Llama-3-70B", 16, 1)] == pytest.approx(98.3, abs=0.1)
    assert tok[("Llama-3-70B", 32, 1)] == pytest.approx(94.3, abs=0.1)
    change = {(r["model"], r["gpus"], r["swept"], r["scale"]): r["change"] for r in swept}
    assert change[("Llama-3-70B", 8, "latency", 0.5)] == pytest.approx(-0.040, abs=0.001)
    assert change[("Llama-3-70B", 16, "latency", 0.5)] == pytest.approx(-0.219, abs=0.001)
    assert change[("Llama-3-70B", 32, "latency", 0.5)] == pytest.approx(-0.290, abs=0.001)
    assert change[("Llama-3-70B", 16, "bandwidth", 10.0)] == pytest.approx(-0.002, abs=0.001)
    heads16 = _spec(spec, HEADS, 16, 1)
    assert heads16["speedup"] == pytest.approx(3.05, abs=0.01)
    assert (heads16["plain_network_latency_s"] * 1e3, heads16["spec_network_latency_s"] * 1e3) == pytest.approx(
        (4.45, 1.44), abs=0.01)
    assert _spec(spec, SHARDED, 8, 256)["speedup"] == pytest.approx(0.90, abs=0.01)
    assert _spec(spec, OWN, 8, 1)["speedup"] == pytest.approx(0.91, abs=0.01)
