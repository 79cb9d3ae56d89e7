"""Mixing: shares track the weights at every prefix, each source is consumed in order, and it is resumable."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.stream.mix import Mix, assign


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.floats(0.01, 10), min_size=1, max_size=5), seed=st.integers(0, 10_000))
def test_shares_stay_within_k_minus_one_of_target_at_every_prefix(weights: list[float], seed: int) -> None:
    fractions = Mix([f"d{i}" for i in range(len(weights))], weights=weights).fractions
    n = 3000
    source, local = assign(np.arange(n), fractions, seed)
    for k, f in enumerate(fractions):
        mine = source == k
        counts = np.cumsum(mine)
        target = f * np.arange(1, n + 1)
        assert np.max(np.abs(counts - target)) <= len(weights) - 1 + 1e-6
        assert np.array_equal(local[mine], np.arange(mine.sum()))  # each source read in order, no gaps


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(0, 20_000), size=st.integers(1, 300), seed=st.integers(0, 100))
def test_any_window_agrees_with_counting_from_zero(lo: int, size: int, seed: int) -> None:
    fractions = (0.5, 0.3, 0.2)
    s0, l0 = assign(np.arange(lo + size), fractions, seed)  # counted from position 0
    sw, lw = assign(np.arange(lo, lo + size), fractions, seed)  # only the window
    assert np.array_equal(sw, s0[lo:]) and np.array_equal(lw, l0[lo:])
    for k in range(3):  # from zero, each source's local positions are exactly 0, 1, 2, ...
        assert np.array_equal(l0[s0 == k], np.arange(int((s0 == k).sum())))


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(0, 10**12), back=st.integers(1, 500), size=st.integers(20, 300), seed=st.integers(0, 100))
def test_far_windows_agree_where_they_overlap(lo: int, back: int, size: int, seed: int) -> None:
    fractions = (0.5, 0.3, 0.2)
    start = max(0, lo - back)
    s1, l1 = assign(np.arange(lo, lo + size), fractions, seed)
    s2, l2 = assign(np.arange(start, lo + size), fractions, seed)
    assert np.array_equal(s1, s2[lo - start:]) and np.array_equal(l1, l2[lo - start:])
    for k in range(3):
        run = l2[s2 == k]
        assert len(run) >= 2  # 20+ positions hold every source (shares stay within 2 of 0.2 * 20)
        assert np.array_equal(run, np.arange(run[0], run[0] + len(run)))  # consecutive per source


def test_mix_validation() -> None:
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        Mix(["a", "b"], weights=[1.0])
    with pytest.raises(ValueError, match="not all zero"):
        Mix(["a"], weights=[0.0])
    assert Mix(["a", "b"], weights=[3, 1]).fractions == (0.75, 0.25)
    source, _ = assign(np.arange(100), (1.0, 0.0), 0)
    assert (source == 0).all()
