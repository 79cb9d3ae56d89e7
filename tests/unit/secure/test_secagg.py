"""Pairwise-masking secure aggregation: the masked sum is the plain sum, dropouts are recovered, misuse refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.secure.errors import SecAggError
from granary.secure.secagg import FRAC_BITS, MaskedSum, MaskingClient, decode, encode, expand


def _round(n: int, values: list[np.ndarray], send: set[int], *, round_id: str = "r1") -> tuple[MaskedSum, list]:
    clients = [MaskingClient(f"site-{i}", round_id) for i in range(n)]
    peers = {c.name: c.public_key() for c in clients}
    agg = MaskedSum(peers, values[0].size)
    for i in sorted(send):
        agg.add(clients[i].name, clients[i].mask(values[i], peers))
    return agg, clients


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), length=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       drop=st.integers(0, 3))
def test_masked_sum_equals_plain_sum_with_dropouts(n: int, length: int, seed: int, drop: int) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.normal(0, 3, length) for _ in range(n)]
    send = set(range(n)) - set(range(min(drop, n - 2)))
    agg, clients = _round(n, values, send)
    reveals = {clients[i].name: clients[i].reveal(agg.dropped) for i in send} if agg.dropped else {}
    total = agg.unmask(reveals)
    plain = np.sum([values[i] for i in send], axis=0)
    # exact on the fixed-point encoding: the masks cancel to the bit
    exact = decode(np.sum([encode(values[i], num_clients=n) for i in send], axis=0, dtype=np.uint64))
    assert np.array_equal(total, exact)
    assert np.max(np.abs(total - plain)) <= len(send) * 2.0 ** -(FRAC_BITS + 1) + 1e-12


def test_a_masked_vector_reveals_nothing_alone() -> None:
    values = [np.zeros(1000), np.zeros(1000), np.zeros(1000)]
    clients = [MaskingClient(n, "r") for n in "abc"]
    peers = {c.name: c.public_key() for c in clients}
    masked = clients[0].mask(values[0], peers)
    assert np.count_nonzero(masked) > 990  # an all-zero input comes out as uniform-looking words
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01


def test_seeds_differ_per_round_and_pair() -> None:
    a1, b1 = MaskingClient("a", "r1"), MaskingClient("b", "r1")
    peers = {"a": a1.public_key(), "b": b1.public_key()}
    x = np.ones(8)
    ma, mb = a1.mask(x, peers), b1.mask(x, peers)
    assert a1.reveal(["b"])["b"] == b1.reveal(["a"])["a"]  # both sides derive the same pairwise seed
    a2, b2 = MaskingClient("a", "r2"), MaskingClient("b", "r2")
    peers2 = {"a": a2.public_key(), "b": b2.public_key()}
    a2.mask(x, peers2)
    assert a2.reveal(["b"])["b"] != a1.reveal(["b"])["b"]
    assert not np.array_equal(ma, mb)


def test_misuse_is_refused() -> None:
    values = [np.ones(4)] * 3
    agg, clients = _round(3, values, {0, 1})
    with pytest.raises(SecAggError, match="declared dropped"):
        clients[0].reveal([clients[0].name])
    with pytest.raises(SecAggError, match="not participants"):
        clients[0].reveal(["mallory"])
    with pytest.raises(SecAggError, match="did not reveal"):
        agg.unmask({})
    with pytest.raises(SecAggError, match="two masked vectors"):
        agg.add(clients[0].name, np.zeros(4, dtype=np.uint64))
    with pytest.raises(SecAggError, match="not a participant"):
        agg.add("mallory", np.zeros(4, dtype=np.uint64))
    with pytest.raises(SecAggError, match=r"expected uint64\[4\]"):
        agg.add(clients[2].name, np.zeros(5, dtype=np.uint64))
    lonely, _ = _round(3, values, {0})
    with pytest.raises(SecAggError, match="at least 2"):
        lonely.unmask({})
    with pytest.raises(SecAggError, match="NaN"):
        encode(np.array([np.nan]), num_clients=2)
    with pytest.raises(SecAggError, match="fixed-point range"):
        encode(np.array([1e15]), num_clients=2)
    with pytest.raises(SecAggError, match="32 bytes"):
        expand(b"short", 4)
