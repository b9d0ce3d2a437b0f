"""Token-length specs: every distribution, clamps, errors, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import WorkloadError, sample_lengths
from workloads.lengths import quantiles_mean


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_int_spec_is_fixed():
    x = sample_lengths(rng(), 512, 10, "prompt_tokens")
    assert x.dtype == np.int64
    np.testing.assert_array_equal(x, np.full(10, 512))


def test_fixed():
    np.testing.assert_array_equal(sample_lengths(rng(), {"dist": "fixed", "value": 7}, 4, "f"), [7, 7, 7, 7])


def test_uniform_inclusive_bounds_and_mean():
    x = sample_lengths(rng(), {"dist": "uniform", "low": 3, "high": 6}, 20_000, "f")
    assert set(np.unique(x).tolist()) == {3, 4, 5, 6}
    assert x.mean() == pytest.approx(4.5, rel=0.01)
    np.testing.assert_array_equal(sample_lengths(rng(), {"dist": "uniform", "low": 9, "high": 9}, 3, "f"), [9, 9, 9])


def test_lognormal_median_and_spread():
    x = sample_lengths(rng(), {"dist": "lognormal", "median": 1000, "sigma": 0.8}, 20_000, "f")
    assert np.median(x) == pytest.approx(1000, rel=0.03)
    assert np.std(np.log(x)) == pytest.approx(0.8, rel=0.03)
    np.testing.assert_array_equal(sample_lengths(rng(), {"dist": "lognormal", "median": 50, "sigma": 0}, 5, "f"), [50] * 5)


def test_exponential_mean_and_support():
    x = sample_lengths(rng(), {"dist": "exponential", "mean": 40}, 20_000, "f")
    assert x.min() >= 1
    assert x.mean() == pytest.approx(40, rel=0.03)
    np.testing.assert_array_equal(sample_lengths(rng(), {"dist": "exponential", "mean": 1}, 5, "f"), [1] * 5)


def test_choice_with_and_without_weights():
    x = sample_lengths(rng(), {"dist": "choice", "values": [10, 20, 30]}, 3_000, "f")
    assert set(np.unique(x).tolist()) == {10, 20, 30}
    y = sample_lengths(rng(), {"dist": "choice", "values": [10, 20], "weights": [3, 1]}, 20_000, "f")
    assert np.mean(y == 10) == pytest.approx(0.75, abs=0.015)
    z = sample_lengths(rng(), {"dist": "choice", "values": [10, 20], "weights": [0, 2]}, 100, "f")
    assert set(z.tolist()) == {20}


def test_min_max_clamps():
    x = sample_lengths(rng(), {"dist": "lognormal", "median": 1000, "sigma": 2.0, "min": 100, "max": 4096}, 5_000, "f")
    assert x.min() == 100 and x.max() == 4096
    y = sample_lengths(rng(), {"dist": "uniform", "low": 1, "high": 100, "max": 10}, 1_000, "f")
    assert y.max() == 10 and y.min() == 1
    z = sample_lengths(rng(), {"dist": "fixed", "value": 5, "min": 8}, 3, "f")
    np.testing.assert_array_equal(z, [8, 8, 8])


def test_mapping_like_config_objects_and_integral_floats():
    from types import MappingProxyType

    spec = MappingProxyType({"dist": "uniform", "low": 2.0, "high": 4})
    x = sample_lengths(rng(), spec, 100, "f")
    assert x.min() >= 2 and x.max() <= 4


def test_deterministic_for_seed():
    spec = {"dist": "lognormal", "median": 300, "sigma": 1.2}
    np.testing.assert_array_equal(sample_lengths(rng(11), spec, 50, "f"), sample_lengths(rng(11), spec, 50, "f"))


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"dist": "zipf", "a": 2}, "output_tokens.dist='zipf' is not a length distribution; allowed: ['choice', 'exponential', 'fixed', 'lognormal', 'quantiles', 'uniform']"),
        ({"value": 3}, "output_tokens.dist=None"),
        ({"dist": "uniform", "low": 5}, "output_tokens.high is missing"),
        ({"dist": "uniform", "low": 5, "high": 2}, "output_tokens.high=2 is below output_tokens.low=5"),
        ({"dist": "uniform", "low": 0, "high": 2}, "output_tokens.low=0"),
        ({"dist": "lognormal", "median": 100, "sigma": 1, "medain": 3}, "output_tokens.medain is not a parameter"),
        ({"dist": "lognormal", "median": 0, "sigma": 1}, "output_tokens.median=0"),
        ({"dist": "lognormal", "median": 10, "sigma": -1}, "output_tokens.sigma=-1"),
        ({"dist": "lognormal", "median": "big", "sigma": 1}, "output_tokens.median='big' is not a number"),
        ({"dist": "exponential", "mean": 0.5}, "output_tokens.mean=0.5"),
        ({"dist": "fixed", "value": 2.5}, "output_tokens.value=2.5 is not an integer"),
        ({"dist": "fixed", "value": True}, "output_tokens.value=True"),
        ({"dist": "choice", "values": []}, "output_tokens.values=[]"),
        ({"dist": "choice", "values": "abc"}, "output_tokens.values='abc'"),
        ({"dist": "choice", "values": [1, 0]}, "output_tokens.values[1]=0"),
        ({"dist": "choice", "values": [1, 2], "weights": [1]}, "output_tokens.weights=[1]"),
        ({"dist": "choice", "values": [1, 2], "weights": [1, -1]}, "output_tokens.weights[1]=-1"),
        ({"dist": "choice", "values": [1, 2], "weights": [0, 0]}, "sum to 0"),
        ({"dist": "quantiles", "p": [0, 1]}, "output_tokens.values is missing"),
        ({"dist": "quantiles", "p": [0, 1], "values": [5]}, "output_tokens.values=[5] is not a list of at least 2"),
        ({"dist": "quantiles", "p": [0, 0.5], "values": [1, 5]}, "output_tokens.p=[0.0, 0.5] must rise strictly from 0 to 1"),
        ({"dist": "quantiles", "p": [0, 0.5, 0.5, 1], "values": [1, 2, 3, 4]}, "must rise strictly"),
        ({"dist": "quantiles", "p": [0, 1], "values": [9, 3]}, "output_tokens.values=[9.0, 3.0] must not decrease"),
        ({"dist": "quantiles", "p": [0, 0.5, 1], "values": [1, 2]}, "output_tokens.p has 3 knots and output_tokens.values 2"),
        ({"dist": "quantiles", "p": [0, 1], "values": [0, 3]}, "output_tokens.values[0]=0"),
        ({"dist": "fixed", "value": 5, "min": 10, "max": 3}, "output_tokens.max=3 is below output_tokens.min=10"),
        ({"dist": "fixed", "value": 5, "min": 0}, "output_tokens.min=0"),
        (0, "output_tokens=0 is too small"),
        ("128", "output_tokens='128' is not a length spec"),
        (True, "output_tokens=True is not a length spec"),
        (12.5, "output_tokens=12.5 is not a length spec"),
    ],
)
def test_spec_errors_name_field_value_and_allowed(spec, fragment):
    with pytest.raises(WorkloadError) as info:
        sample_lengths(rng(), spec, 10, "output_tokens")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_quantiles_reproduce_their_knots_and_mean():
    """A distribution known by its percentiles (as benchmark logs publish them): samples hit the
    knots' percentiles and the trapezoid mean; outside the knots nothing is drawn."""
    p, v = [0, 0.5, 0.9, 0.99, 1], [1, 250, 520, 930, 1024]
    x = sample_lengths(rng(3), {"dist": "quantiles", "p": p, "values": v}, 400_000, "f")
    assert x.min() >= 1 and x.max() <= 1024
    np.testing.assert_allclose(np.percentile(x, [50, 90, 99]), [250, 520, 930], rtol=0.01)
    assert x.mean() == pytest.approx(quantiles_mean(p, v), rel=0.005)
    assert quantiles_mean([0, 1], [10, 30]) == 20.0
    # a flat stretch is a point mass: half the draws are exactly 7
    y = sample_lengths(rng(4), {"dist": "quantiles", "p": [0, 0.5, 1], "values": [7, 7, 100]}, 20_000, "f")
    assert (y == 7).mean() == pytest.approx(0.5, abs=0.02)


def test_n_validation():
    with pytest.raises(WorkloadError, match="n=0"):
        sample_lengths(rng(), 5, 0, "f")


length_specs = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.builds(lambda v: {"dist": "fixed", "value": v}, st.integers(1, 10**6)),
    st.builds(lambda lo, w: {"dist": "uniform", "low": lo, "high": lo + w}, st.integers(1, 10**5), st.integers(0, 10**5)),
    st.builds(lambda m, s: {"dist": "lognormal", "median": m, "sigma": s},
              st.floats(1e-3, 1e6), st.floats(0, 10)),
    st.builds(lambda m: {"dist": "exponential", "mean": m}, st.floats(1, 1e6)),
    st.builds(lambda v: {"dist": "choice", "values": v}, st.lists(st.integers(1, 10**6), min_size=1, max_size=5)),
    st.builds(lambda v: {"dist": "quantiles", "p": [i / (len(v) - 1) for i in range(len(v))], "values": sorted(v)},
              st.lists(st.floats(1, 1e6), min_size=2, max_size=6)),
)


@settings(max_examples=120, deadline=None)
@given(
    spec=length_specs,
    clamp=st.tuples(st.none() | st.integers(1, 5000), st.none() | st.integers(0, 5000)),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 200),
)
def test_property_lengths_at_least_one_and_within_clamps(spec, clamp, seed, n):
    lo, width = clamp
    if isinstance(spec, dict):
        spec = dict(spec)
        if lo is not None:
            spec["min"] = lo
            if width is not None:
                spec["max"] = lo + width
    x = sample_lengths(np.random.default_rng(seed), spec, n, "prompt_tokens")
    assert x.shape == (n,) and x.dtype == np.int64
    assert x.min() >= 1
    if isinstance(spec, dict) and "min" in spec:
        assert x.min() >= spec["min"]
    if isinstance(spec, dict) and "max" in spec:
        assert x.max() <= spec["max"]
