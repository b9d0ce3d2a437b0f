"""synthetic_requests: composition, independence of streams, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import RequestTable, WorkloadError, synthetic_requests

PROMPT = {"dist": "lognormal", "median": 1500, "sigma": 1.0, "max": 8192}
OUTPUT = {"dist": "exponential", "mean": 30}


def make(seed=0, **kw) -> RequestTable:
    args = dict(rate_per_s=4.0, n=2_000, prompt_tokens=PROMPT, output_tokens=OUTPUT)
    args.update(kw)
    return synthetic_requests(np.random.default_rng(seed), **args)


def test_poisson_table():
    t = make(n=20_000)
    assert isinstance(t, RequestTable) and len(t) == 20_000
    assert t.source == "synthetic-poisson"
    assert t.arrival_s[0] == 0.0
    assert t.summary()["rate_per_s"] == pytest.approx(4.0, rel=0.03)
    assert t.prompt_tokens.max() <= 8192
    assert t.output_tokens.mean() == pytest.approx(30, rel=0.05)


def test_gamma_table_cv():
    t = make(arrival="gamma", cv=3.0, n=20_000)
    assert t.source == "synthetic-gamma(cv=3)"
    g = np.diff(t.arrival_s)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.15)


def test_same_seed_identical():
    a, b = make(seed=42), make(seed=42)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    c = make(seed=43)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_length_specs_do_not_change_arrivals():
    base = make(seed=5)
    other = make(seed=5, prompt_tokens=64, output_tokens={"dist": "uniform", "low": 1, "high": 9})
    np.testing.assert_array_equal(base.arrival_s, other.arrival_s)
    # changing only the output spec leaves prompts unchanged too
    third = make(seed=5, output_tokens=7)
    np.testing.assert_array_equal(base.prompt_tokens, third.prompt_tokens)
    np.testing.assert_array_equal(third.output_tokens, np.full(len(third), 7))
    # ... and changing only the prompt spec leaves outputs unchanged
    fourth = make(seed=5, prompt_tokens=64)
    np.testing.assert_array_equal(base.output_tokens, fourth.output_tokens)


def test_arrival_process_does_not_change_lengths():
    poisson = make(seed=9)
    gamma = make(seed=9, arrival="gamma", cv=0.5)
    assert not np.array_equal(poisson.arrival_s, gamma.arrival_s)
    np.testing.assert_array_equal(poisson.prompt_tokens, gamma.prompt_tokens)
    np.testing.assert_array_equal(poisson.output_tokens, gamma.output_tokens)


def test_reusing_a_generator_gives_fresh_draws():
    rng = np.random.default_rng(1)
    a = synthetic_requests(rng, rate_per_s=1.0, n=50, prompt_tokens=PROMPT, output_tokens=OUTPUT)
    b = synthetic_requests(rng, rate_per_s=1.0, n=50, prompt_tokens=PROMPT, output_tokens=OUTPUT)
    assert not np.array_equal(a.arrival_s, b.arrival_s)


def test_errors():
    with pytest.raises(WorkloadError, match=r"arrival='bursty' is not an arrival process; allowed: \['poisson', 'gamma'\]"):
        make(arrival="bursty")
    with pytest.raises(WorkloadError, match="rate_per_s=0"):
        make(rate_per_s=0)
    with pytest.raises(WorkloadError, match="cv=0"):
        make(arrival="gamma", cv=0)
    with pytest.raises(WorkloadError, match="prompt_tokens.dist='normal'"):
        make(prompt_tokens={"dist": "normal"})
    with pytest.raises(WorkloadError, match="numpy.random.Generator"):
        synthetic_requests(0, rate_per_s=1.0, n=5, prompt_tokens=1, output_tokens=1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    arrival=st.sampled_from(["poisson", "gamma"]),
    rate=st.floats(1e-2, 1e3),
    cv=st.floats(0.1, 5.0),
    n=st.integers(1, 200),
)
def test_property_synthetic_tables_valid(seed, arrival, rate, cv, n):
    t = synthetic_requests(
        np.random.default_rng(seed), arrival=arrival, rate_per_s=rate, n=n, cv=cv,
        prompt_tokens=PROMPT, output_tokens=OUTPUT,
    )
    assert len(t) == n
    assert np.all(np.diff(t.arrival_s) >= 0)
    assert t.prompt_tokens.min() >= 1 and t.output_tokens.min() >= 1
