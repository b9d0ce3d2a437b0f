"""RequestTable: validation, normalisation, take, scaled_rate, summary, to_arrow."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import RequestTable, WorkloadError


def table(arrival=(0.0, 1.0, 3.0), prompt=(10, 20, 30), output=(1, 2, 3), **kw) -> RequestTable:
    return RequestTable(np.array(arrival, dtype=float), np.array(prompt), np.array(output), source="t", **kw)


def test_basic_fields_and_dtypes():
    t = table()
    assert len(t) == 3
    assert t.arrival_s.dtype == np.float64
    assert t.prompt_tokens.dtype == np.int64 and t.output_tokens.dtype == np.int64
    assert t.duration_s == 3.0
    assert t.prefix_block_ids is None and t.prefix_block_tokens == 512 and t.clamped_rows == 0


def test_arrivals_are_normalised_to_start_at_zero():
    t = table(arrival=(5.0, 6.5, 9.0))
    np.testing.assert_array_equal(t.arrival_s, [0.0, 1.5, 4.0])


def test_arrays_are_read_only_copies():
    arrival = np.array([0.0, 1.0])
    t = RequestTable(arrival, np.array([1, 2]), np.array([3, 4]), source="t")
    arrival[1] = 99.0
    assert t.arrival_s[1] == 1.0
    with pytest.raises(ValueError):
        t.arrival_s[0] = 1.0
    with pytest.raises(AttributeError):
        t.source = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(arrival=(0.0, 1.0), prompt=(1, 2, 3), output=(1, 2, 3)), "lengths differ"),
        (dict(arrival=(0.0, 2.0, 1.0)), "non-decreasing"),
        (dict(arrival=(0.0, math.nan, 1.0)), "not finite"),
        (dict(arrival=(-1.0, 0.0, 1.0)), "negative"),
        (dict(prompt=(10, 0, 30)), "prompt_tokens[1]=0"),
        (dict(output=(1, 2, -3)), "output_tokens[2]=-3"),
        (dict(prompt=(1.5, 2, 3)), "not an integer"),
        (dict(arrival=(), prompt=(), output=()), "at least 1 request"),
    ],
)
def test_validation_errors(kwargs, fragment):
    with pytest.raises(WorkloadError) as info:
        table(**kwargs)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_prefix_block_ids_validated_and_carried():
    blocks = (np.array([0, 1]), np.array([0, 2]), np.array([3]))
    t = table(prefix_block_ids=blocks)
    assert len(t.prefix_block_ids) == 3
    assert t.take(2).prefix_block_ids[1].tolist() == [0, 2]
    with pytest.raises(WorkloadError, match="one per request"):
        table(prefix_block_ids=blocks[:2])
    with pytest.raises(WorkloadError, match="integer array"):
        table(prefix_block_ids=(np.array([0.5]), np.array([1]), np.array([2])))


def test_take():
    t = table()
    first_two = t.take(2)
    assert len(first_two) == 2
    np.testing.assert_array_equal(first_two.prompt_tokens, [10, 20])
    assert len(t) == 3  # original untouched
    for bad in (0, -1, 4, True, 1.0):
        with pytest.raises(WorkloadError, match=r"1\.\.3"):
            t.take(bad)


def test_scaled_rate_doubles_rate_and_preserves_order():
    t = table(arrival=(0.0, 1.0, 3.0, 3.0, 10.0), prompt=(5, 4, 3, 2, 1), output=(1, 1, 1, 1, 1))
    fast = t.scaled_rate(2.0)
    np.testing.assert_allclose(fast.arrival_s, [0.0, 0.5, 1.5, 1.5, 5.0])
    np.testing.assert_array_equal(fast.prompt_tokens, t.prompt_tokens)
    assert fast.summary()["rate_per_s"] == pytest.approx(2 * t.summary()["rate_per_s"])
    assert fast.duration_s == pytest.approx(t.duration_s / 2)
    np.testing.assert_allclose(t.scaled_rate(0.5).arrival_s, t.arrival_s * 2)
    for bad in (0, -2.0, math.inf, math.nan, "2"):
        with pytest.raises(WorkloadError, match="factor"):
            t.scaled_rate(bad)


def test_summary_values():
    t = table(arrival=(0.0, 1.0, 2.0, 4.0), prompt=(1, 2, 3, 100), output=(10, 10, 10, 10))
    s = t.summary()
    assert s["count"] == 4
    assert s["duration_s"] == 4.0
    assert s["rate_per_s"] == pytest.approx(3 / 4)
    assert s["mean_prompt_tokens"] == pytest.approx(26.5)
    assert s["median_prompt_tokens"] == 2.5
    assert s["p99_prompt_tokens"] == pytest.approx(np.percentile([1, 2, 3, 100], 99))
    assert s["mean_output_tokens"] == 10.0
    single = table(arrival=(0.0,), prompt=(1,), output=(1,)).summary()
    assert math.isnan(single["rate_per_s"])
    assert table(arrival=(0.0, 0.0), prompt=(1, 1), output=(1, 1)).summary()["rate_per_s"] == math.inf


def test_to_arrow():
    t = table()
    arrow = t.to_arrow()
    assert arrow.column_names == ["arrival_s", "prompt_tokens", "output_tokens"]
    assert arrow.schema.field("arrival_s").type == pa.float64()
    assert arrow.schema.field("prompt_tokens").type == pa.int64()
    assert arrow.column("output_tokens").to_pylist() == [1, 2, 3]


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), min_size=0, max_size=50),
    factor=st.floats(min_value=1e-3, max_value=1e3),
    data=st.data(),
)
def test_property_scaling_and_take(gaps, factor, data):
    arrival = np.concatenate(([0.0], np.cumsum(gaps)))
    n = arrival.size
    prompt = np.arange(1, n + 1)
    t = RequestTable(arrival, prompt, prompt[::-1].copy(), source="p")
    scaled = t.scaled_rate(factor)
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    assert scaled.arrival_s[0] == 0.0
    np.testing.assert_array_equal(scaled.prompt_tokens, prompt)
    k = data.draw(st.integers(min_value=1, max_value=n))
    head = t.take(k)
    assert len(head) == k
    np.testing.assert_array_equal(head.arrival_s, t.arrival_s[:k])
