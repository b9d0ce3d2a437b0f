"""A decode span's KV block use, step by step, against counting block boundaries one by one."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policy.batching import DecodeSpan


@settings(max_examples=300, deadline=None)
@given(bs=st.sampled_from([1, 2, 16, 32]), data=st.data(), steps=st.integers(1, 300), used0=st.integers(0, 100))
def test_span_block_use_counts_every_boundary(bs, data, steps, used0):
    # both evaluation paths: a few sequences (one term each) and many (phase histogram)
    firsts = data.draw(st.lists(st.integers(1, bs), min_size=1, max_size=20))
    span = DecodeSpan(None, steps, used0, firsts, bs, 0)  # type: ignore[arg-type]
    expected = [used0 + sum(1 for f in firsts for j2 in range(f, j + 1, bs)) for j in range(steps)]
    assert span.kv_blocks_used(steps).tolist() == expected
