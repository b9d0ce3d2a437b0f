"""Arrival samplers: statistics, determinism, validation, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import WorkloadError, gamma_arrivals, onoff_arrivals, poisson_arrivals


def gaps(arrivals: np.ndarray) -> np.ndarray:
    return np.diff(arrivals)


def test_poisson_mean_gap_and_cv():
    a = poisson_arrivals(np.random.default_rng(1234), rate_per_s=5.0, n=20_000)
    assert a.shape == (20_000,) and a.dtype == np.float64
    assert a[0] == 0.0
    g = gaps(a)
    # standard error of the mean gap is 0.2 / sqrt(19999) ~ 0.0014: allow ~3 %
    assert g.mean() == pytest.approx(0.2, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 3.0])
def test_gamma_mean_and_cv(cv):
    a = gamma_arrivals(np.random.default_rng(99), rate_per_s=10.0, cv=cv, n=20_000)
    g = gaps(a)
    assert a[0] == 0.0
    assert g.mean() == pytest.approx(0.1, rel=0.05 * max(cv, 1))
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.1)


def test_gamma_cv_one_is_exponential():
    g = gaps(gamma_arrivals(np.random.default_rng(5), 2.0, 1.0, 20_000))
    # exponential: P(gap > mean) = exp(-1)
    assert np.mean(g > 0.5) == pytest.approx(np.exp(-1), abs=0.015)


def test_onoff_mean_rate():
    a = onoff_arrivals(np.random.default_rng(3), rate_on_per_s=20.0, mean_on_s=2.0, mean_off_s=6.0, n=20_000)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    rate = (a.size - 1) / a[-1]
    assert rate == pytest.approx(20.0 * 2.0 / 8.0, rel=0.1)
    assert np.std(np.diff(a)) / np.mean(np.diff(a)) > 1.5  # burstier than Poisson


def test_same_seed_same_arrays_and_different_seed_differs():
    for sampler in (
        lambda r: poisson_arrivals(r, 3.0, 500),
        lambda r: gamma_arrivals(r, 3.0, 2.5, 500),
        lambda r: onoff_arrivals(r, 3.0, 1.0, 1.0, 500),
    ):
        np.testing.assert_array_equal(sampler(np.random.default_rng(7)), sampler(np.random.default_rng(7)))
        assert not np.array_equal(sampler(np.random.default_rng(7)), sampler(np.random.default_rng(8)))


def test_single_arrival():
    np.testing.assert_array_equal(poisson_arrivals(np.random.default_rng(0), 1.0, 1), [0.0])
    np.testing.assert_array_equal(gamma_arrivals(np.random.default_rng(0), 1.0, 2.0, 1), [0.0])


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda r: poisson_arrivals(r, 0.0, 10), "rate_per_s=0.0"),
        (lambda r: poisson_arrivals(r, -1, 10), "rate_per_s=-1"),
        (lambda r: poisson_arrivals(r, float("inf"), 10), "rate_per_s=inf"),
        (lambda r: poisson_arrivals(r, 1.0, 0), "n=0"),
        (lambda r: poisson_arrivals(r, 1.0, 2.5), "n=2.5"),
        (lambda r: gamma_arrivals(r, 1.0, 0.0, 10), "cv=0.0"),
        (lambda r: gamma_arrivals(r, 1.0, -2, 10), "cv=-2"),
        (lambda r: gamma_arrivals(r, "fast", 1.0, 10), "rate_per_s='fast'"),
        (lambda r: onoff_arrivals(r, 1.0, 0.0, 1.0, 10), "mean_on_s=0.0"),
        (lambda r: poisson_arrivals(42, 1.0, 10), "numpy.random.Generator"),
    ],
)
def test_parameter_validation(call, fragment):
    with pytest.raises(WorkloadError) as info:
        call(np.random.default_rng(0))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    rate=st.floats(min_value=1e-3, max_value=1e4),
    cv=st.floats(min_value=0.05, max_value=8.0),
    n=st.integers(min_value=1, max_value=300),
)
def test_property_arrivals_non_decreasing(seed, rate, cv, n):
    for a in (
        poisson_arrivals(np.random.default_rng(seed), rate, n),
        gamma_arrivals(np.random.default_rng(seed), rate, cv, n),
        onoff_arrivals(np.random.default_rng(seed), rate, 1.0 / rate + cv, cv, n),
    ):
        assert a.shape == (n,)
        assert a[0] == 0.0
        assert np.all(np.isfinite(a))
        assert np.all(np.diff(a) >= 0)
