"""Time-varying demand (workloads/rate_profile.py) and back-to-back replay (RequestTable.tiled).

A rate profile multiplies the arrival rate by m(t) through an exact time change: m times the
arrivals where m is m, every request kept once and in order, the inverse of the profile's
integral, and a Poisson base keeps its counts within their confidence interval.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sim.app import run
from sim.config.compose import compose_config
from workloads import RateProfile, RequestTable, WorkloadError, apply_rate_profile, poisson_arrivals, read_rate_profile


def _uniform(n: int, gap_s: float = 0.1) -> RequestTable:
    return RequestTable(np.arange(n) * gap_s, np.full(n, 10), np.full(n, 5), source="uniform")


STEP = RateProfile(np.array([0.0, 100.0, 100.0, 200.0, 200.0, 300.0]), np.array([1.0, 1.0, 3.0, 3.0, 1.0, 1.0]),
                   source="step")


def test_a_multiplier_over_an_interval_gives_that_many_times_the_arrivals():
    """Base: one arrival every 0.1 s; profile 1 / 3 / 1 over 100 s each: exactly 1,000, 3,000, 1,000."""
    out = apply_rate_profile(_uniform(5000), STEP).arrival_s
    counts = [int(np.sum((out >= a) & (out < a + 100 - 1e-9))) for a in (0, 100, 200)]
    assert counts == [1000, 3000, 1000]
    assert out.size == 5000 and np.all(np.diff(out) >= 0)
    # the gaps inside the 3x interval are a third of the base's
    inside = np.diff(out[(out > 101) & (out < 199)])
    assert np.allclose(inside, 0.1 / 3)


def test_poisson_counts_follow_the_profile_within_their_confidence_interval():
    rng = np.random.default_rng(7)
    base = RequestTable(poisson_arrivals(rng, 20.0, 60_000), np.full(60_000, 8), np.full(60_000, 4), source="p")
    # a ramp 0.5 -> 2 over 600 s then back, one cycle of 1,200 s (mean 1.25)
    prof = RateProfile(np.array([0.0, 600.0, 1200.0]), np.array([0.5, 2.0, 0.5]), source="ramp")
    out = apply_rate_profile(base, prof).arrival_s
    for a, b in ((0, 300), (300, 600), (600, 900), (1200, 1500)):
        expected = 20.0 * float(prof.integral(b) - prof.integral(a))
        got = int(np.sum((out >= a) & (out < b)))
        assert abs(got - expected) < 4 * np.sqrt(expected), (a, b, got, expected)


def test_zero_multiplier_means_no_arrivals_and_a_flat_profile_changes_nothing():
    night = RateProfile(np.array([0.0, 50.0, 50.0, 80.0, 80.0, 100.0]), np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
                        source="night")
    out = apply_rate_profile(_uniform(3000), night).arrival_s
    assert not np.any((out > 50 + 1e-9) & (out < 80 - 1e-9))
    flat = RateProfile(np.array([0.0, 10.0]), np.array([1.0, 1.0]), source="flat")
    t = _uniform(500)
    assert np.allclose(apply_rate_profile(t, flat).arrival_s, t.arrival_s)
    assert flat.mean_multiplier() == 1.0 and night.mean_multiplier() == pytest.approx(0.7)


knots = st.lists(st.tuples(st.floats(0.0, 50.0), st.floats(0.0, 5.0)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(knots, st.floats(0.01, 5.0), st.lists(st.floats(0.0, 1e4), min_size=1, max_size=200))
def test_the_time_change_inverts_the_integral_and_keeps_order(pairs, m0, base):
    widths = np.array([w for w, _ in pairs])
    t = np.concatenate(([0.0], np.cumsum(widths)))
    m = np.concatenate(([m0], [v for _, v in pairs]))
    t[-1] = max(t[-1], 1.0)
    try:
        prof = RateProfile(t, m, source="h")
    except WorkloadError:
        assume(False)          # a cycle with no area: rejected by design (tested with the CSV errors)
    s = np.sort(np.array(base))
    out = prof.warp(s)
    assert np.allclose(prof.integral(out), s, rtol=1e-9, atol=1e-6)
    table = RequestTable(s, np.ones(s.size, dtype=np.int64), np.ones(s.size, dtype=np.int64), source="h")
    warped = apply_rate_profile(table, prof).arrival_s        # the table accepts it: sorted, >= 0
    assert np.all(np.diff(warped) >= 0) and warped[0] == 0.0


def test_a_profile_that_starts_at_zero_keeps_its_phase_and_ulps_never_reverse_arrivals():
    late = RateProfile(np.array([0.0, 50.0, 50.0, 100.0]), np.array([0.0, 0.0, 1.0, 1.0]), source="late")
    t = apply_rate_profile(RequestTable(np.arange(200.0), np.full(200, 5), np.full(200, 5), source="u"), late)
    assert t.rebased_s == 0.0 and t.arrival_s[0] == 0.0 and t.arrival_s[1] == pytest.approx(51.0)
    assert not np.any((t.arrival_s > 0) & (t.arrival_s < 50)) and not np.any((t.arrival_s > 100) & (t.arrival_s < 150))
    step = RateProfile(np.array([0.0, 0.3, 0.3, 0.9]), np.array([1.0, 1.0, 0.5, 0.5]), source="s")
    close = RequestTable(np.array([0.0, 8.4, np.nextafter(8.4, 9)]), np.ones(3, dtype=np.int64), np.ones(3, dtype=np.int64))
    assert np.all(np.diff(apply_rate_profile(close, step).arrival_s) >= 0)


def test_csv_profiles_and_their_one_line_errors(tmp_path):
    good = tmp_path / "day.csv"
    good.write_text("time_s,multiplier\n0,0.5\n43200,1.5\n86400,0.5\n")
    prof = read_rate_profile(good)
    assert prof.period_s == 86400 and prof.mean_multiplier() == pytest.approx(1.0)
    assert float(prof.at(43200)) == pytest.approx(1.5) and float(prof.at(86400 + 21600)) == pytest.approx(1.0)
    for text, part in (("a,b\n0,1\n1,1\n", "header"), ("time_s,multiplier\n0,1\n", "at least 2 rows"),
                       ("time_s,multiplier\n5,1\n10,1\n", "must be 0"), ("time_s,multiplier\n0,1\n0,1\n", "must be >= 0.001"),
                       ("time_s,multiplier\n0,1\n1,inf\n", "finite"), ("time_s,multiplier\n0,1\n1,x\n", "line 3")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(WorkloadError, match=part) as exc:
            read_rate_profile(bad)
        assert "\n" not in str(exc.value)


def test_tiling_replays_the_trace_back_to_back():
    t = RequestTable(np.array([0.0, 1.0, 3.0]), np.array([5, 6, 7]), np.array([1, 2, 3]), source="t",
                     priority=np.array([0, 1, 2]))
    three = t.tiled(3)
    assert len(three) == 9 and three.tiled(1) is three
    assert np.allclose(three.arrival_s, [0, 1, 3, 4.5, 5.5, 7.5, 9, 10, 12])   # period 3 x 3/2
    assert list(three.prompt_tokens) == [5, 6, 7] * 3 and list(three.priority) == [0, 1, 2] * 3
    with pytest.raises(WorkloadError, match="workload.repeat"):
        RequestTable(np.array([0.0]), np.array([5]), np.array([1]), source="one").tiled(2)
    with pytest.raises(WorkloadError, match="workload.repeat"):
        t.tiled(0)


def test_a_run_replays_the_warped_tiled_trace(tmp_path):
    prof = tmp_path / "p.csv"
    prof.write_text("time_s,multiplier\n0,1\n20,1\n20,4\n40,4\n40,1\n60,1\n")
    cfg = compose_config(["model=llama3_8b", "parallel.tp=1", "workload=synthetic", "workload.arrival=poisson",
                          "workload.rate_per_s=5", "workload.max_requests=100", "workload.repeat=3",
                          f"workload.rate_profile={prof}", "workload.prompt_tokens=64", "workload.output_tokens=8",
                          "output.progress=never"])
    s = run(cfg, str(tmp_path / "out"))
    assert s["requests"]["total"] == 300 and s["requests"]["completed"] == 300
    arr = np.sort(pq.read_table(tmp_path / "out" / "requests.parquet", columns=["arrival_s"])["arrival_s"].to_numpy())
    fast = np.sum((arr >= 20) & (arr < 40)) / 20
    slow = np.sum((arr >= 0) & (arr < 20)) / 20
    assert fast > 2 * slow     # 4x the rate there (Poisson: about 20 vs 5 per second)


def test_bundled_profiles_are_the_azure_2024_shapes():
    """diurnal / weekly (conversation) and their code twins: mean 1 over the cycle, a day or a
    week long, the peak / trough ratios and hours ATTRIBUTION.md states."""
    from workloads.rate_profile import BUNDLED_PROFILES
    expect = {"diurnal": (86400, 1.79, 14, 22), "diurnal_code": (86400, 8.67, 19, 8),
              "weekly": (604800, 3.53, None, None), "weekly_code": (604800, 28.9, None, None)}
    for name, (cycle, ratio, peak_h, trough_h) in expect.items():
        assert name in BUNDLED_PROFILES
        p = read_rate_profile(name)
        hours = p.multiplier[::2]
        assert p.time_s[-1] == cycle and len(hours) == cycle // 3600
        assert p.integral(float(cycle)) / cycle == pytest.approx(1.0, abs=1e-3)
        assert hours.max() / hours.min() == pytest.approx(ratio, rel=0.01)
        if peak_h is not None:
            assert int(np.argmax(hours)) == peak_h and int(np.argmin(hours)) == trough_h


def test_the_bundled_day_spans_a_day_at_the_traces_mean_rate():
    from sim.build import load_workload
    from sim.config.parse import parse_config
    table = load_workload(parse_config(compose_config(["workload=azure_code_day"])))
    assert len(table) == 24 * 8819
    assert 86000 < table.arrival_s[-1] < 86401
    hour = np.histogram(table.arrival_s, bins=24, range=(0, 86400))[0]
    assert hour.argmax() == 19 and 4 <= hour.argmin() <= 10       # the 2023 hour is bursty within itself
    assert hour.max() / hour.min() > 6
