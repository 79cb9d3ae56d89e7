"""Orders: each epoch is a permutation, deterministic in (seed, epoch), fresh per epoch, well mixed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.stream.shuffle import SHUFFLES, FeistelOrder, make_order


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32), epoch=st.integers(0, 50),
       name=st.sampled_from(sorted(SHUFFLES)))
def test_every_epoch_is_a_permutation(n: int, seed: int, epoch: int, name: str) -> None:
    order = make_order(name, n, seed=seed, epoch=epoch)
    assert np.array_equal(np.sort(order.take(np.arange(n))), np.arange(n))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 5000), seed=st.integers(0, 1000), lo=st.integers(0, 4999), size=st.integers(1, 200))
def test_any_window_equals_the_slice_of_the_whole_epoch(n: int, seed: int, lo: int, size: int) -> None:
    lo = lo % n
    hi = min(n, lo + size)
    order = make_order("global", n, seed=seed, epoch=3)
    whole = order.take(np.arange(n))
    again = make_order("global", n, seed=seed, epoch=3).take(np.arange(lo, hi))
    assert np.array_equal(whole[lo:hi], again)


def test_epochs_and_seeds_give_different_orders() -> None:
    n = 10_000
    a = make_order("global", n, seed=1, epoch=0).take(np.arange(n))
    b = make_order("global", n, seed=1, epoch=1).take(np.arange(n))
    c = make_order("global", n, seed=2, epoch=0).take(np.arange(n))
    assert (a != b).mean() > 0.99 and (a != c).mean() > 0.99


def test_global_shuffle_draws_batches_from_almost_all_shards() -> None:
    n, shards = 262_144, 16
    perm = make_order("global", n, seed=0, epoch=0).take(np.arange(n))
    per_batch = [len(np.unique(perm[i : i + 64] // (n // shards))) for i in range(0, n, 64)]
    # A uniform random batch of 64 from 16 shards covers 16 * (1 - (15/16)^64) = 15.74 on average.
    assert np.mean(per_batch) > 15.5
    assert abs(np.corrcoef(np.arange(n), perm)[0, 1]) < 0.01


def test_block_shuffle_keeps_locality_and_identity_is_sequential() -> None:
    n = 64 * 16 * 4
    perm = make_order("block", n, seed=0, epoch=0).take(np.arange(n))
    window = perm[: 64 * 16]
    assert len(np.unique(window // 64)) == 16  # one window = exactly 16 whole blocks
    assert np.array_equal(make_order("none", n, seed=0, epoch=0).take(np.arange(5)), np.arange(5))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown shuffle 'bogus'"):
        make_order("bogus", 10, seed=0, epoch=0)
    with pytest.raises(ValueError, match="positions must lie"):
        FeistelOrder(10, 0, 0).take(np.array([10]))
    with pytest.raises(ValueError, match="num_samples"):
        FeistelOrder(0, 0, 0)
