"""Secure aggregation with Shamir-shared seeds: exact sums with dropouts, threshold errors, hiding, misuse refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("Crypto", reason="Shamir sharing needs pycryptodome (granary[privacy])")

from granary.secure import shamir
from granary.secure.errors import SecAggError
from granary.secure.secagg import FRAC_BITS, SecAggClient, decode, encode, expand
from granary.secure.secagg_server import SecAggServer


def _setup(n: int, length: int, *, threshold: int | None = None, round_id: str = "r1",
           seed: int | None = None) -> tuple[list[SecAggClient], SecAggServer]:
    rng = random.Random(seed) if seed is not None else None
    clients = [SecAggClient(f"site-{i}", round_id, **({"randbytes": rng.randbytes} if rng else {}))
               for i in range(n)]
    keys = {c.name: c.public_keys() for c in clients}
    server = SecAggServer(keys, length, round_id=round_id, threshold=threshold)
    for c in clients:
        server.add_shares(c.name, c.share_keys(keys, threshold=server.threshold))
    return clients, server


def _round(n: int, values: list[np.ndarray], dropped: set[int], *, threshold: int | None = None) -> np.ndarray:
    clients, server = _setup(n, values[0].size, threshold=threshold)
    for i, c in enumerate(clients):
        masked = c.mask(values[i], server.shares_for(c.name))  # every client masks; the dropped never send
        if i not in dropped:
            server.add(c.name, masked)
    answers = {c.name: c.unmask(server.survivors, server.dropped) for i, c in enumerate(clients) if i not in dropped}
    return server.unmask(answers)


def _exact(values: list[np.ndarray], keep: list[int], n: int) -> np.ndarray:
    return decode(np.sum([encode(values[i], num_clients=n) for i in keep], axis=0, dtype=np.uint64))


@pytest.mark.parametrize(("n", "dropped"), [(3, set()), (3, {1}), (5, set()), (5, {4}), (5, {0, 3}),
                                            (6, {1, 2})])
def test_sum_is_exact_with_zero_one_and_several_dropouts(n: int, dropped: set[int]) -> None:
    rng = np.random.default_rng(n * 10 + len(dropped))
    values = [rng.normal(0, 3, 257) for _ in range(n)]
    keep = [i for i in range(n) if i not in dropped]
    total = _round(n, values, dropped)
    assert np.array_equal(total, _exact(values, keep, n))  # the masks cancel to the bit
    assert np.max(np.abs(total - np.sum([values[i] for i in keep], axis=0))) <= len(keep) * 2.0 ** -FRAC_BITS


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 6), length=st.integers(1, 200), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_unmasked_sum_equals_plain_sum(n: int, length: int, seed: int, data: st.DataObject) -> None:
    threshold = n // 2 + 1
    dropped = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n - threshold, unique=True)))
    rng = np.random.default_rng(seed)
    values = [rng.normal(0, 5, length) for _ in range(n)]
    keep = [i for i in range(n) if i not in dropped]
    assert np.array_equal(_round(n, values, dropped), _exact(values, keep, n))


def test_fewer_than_threshold_survivors_is_a_clear_error() -> None:
    values = [np.ones(8)] * 5
    clients, server = _setup(5, 8)  # threshold 3
    for c in clients[:2]:
        server.add(c.name, c.mask(values[0], server.shares_for(c.name)))
    with pytest.raises(SecAggError, match="only 2 of 5 clients sent masked vectors; the threshold is 3"):
        server.unmask({})
    clients, server = _setup(5, 8)
    for c in clients[:3]:
        server.add(c.name, c.mask(values[0], server.shares_for(c.name)))
    answers = {c.name: c.unmask(server.survivors, server.dropped) for c in clients[:2]}  # the third went silent
    with pytest.raises(SecAggError, match="only 2 of 3 survivors answered the unmasking step; 3 shares"):
        server.unmask(answers)
    with pytest.raises(SecAggError, match="fewer than the threshold 3"):
        clients[0].unmask(["site-0", "site-1"], ["site-2", "site-3", "site-4"])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), x0=st.floats(-100, 100), x1=st.floats(-100, 100))
def test_the_mask_does_not_depend_on_the_input(seed: int, x0: float, x1: float) -> None:
    # the same client state (keys, self-mask seed, peers' keys) masks two inputs: the masks are the same words,
    # so what the server sees is the input plus a fixed mask, and only the difference of the encodings differs
    views = []
    for x in (x0, x1):
        clients, server = _setup(3, 64, seed=seed)
        masked = clients[0].mask(np.full(64, x), server.shares_for("site-0"))
        with np.errstate(over="ignore"):
            views.append(masked - encode(np.full(64, x), num_clients=3))
    assert np.array_equal(views[0], views[1])


def test_a_masked_vector_looks_uniform_whatever_the_input() -> None:
    for x in (0.0, 1000.0):
        clients, server = _setup(3, 4000)
        masked = clients[0].mask(np.full(4000, x), server.shares_for("site-0"))
        bits = np.unpackbits(masked.view(np.uint8))
        assert abs(bits.mean() - 0.5) < 0.01
        counts = np.bincount(masked.view(np.uint8), minlength=256)
        chi2 = float(np.sum((counts - counts.mean()) ** 2 / counts.mean()))
        assert chi2 < 400  # 255 degrees of freedom: p < 1e-6 above 400


def test_the_server_cannot_strip_one_survivors_masks() -> None:
    # even after recovering a survivor's self-mask seed, its pairwise masks keep its input hidden; and no client
    # hands out the other kind of share for a client it already revealed
    x = np.zeros(2000)
    clients, server = _setup(3, 2000)
    masked = {c.name: c.mask(x, server.shares_for(c.name)) for c in clients}
    for name, m in masked.items():
        server.add(name, m)
    answers = {c.name: c.unmask(server.survivors, server.dropped) for c in clients}
    b0 = shamir.combine({i + 1: answers[f"site-{i}"]["site-0"][1] for i in range(2)}, threshold=2)
    with np.errstate(over="ignore"):
        residue = masked["site-0"] - expand(b0, 2000)
    assert abs(np.unpackbits(residue.view(np.uint8)).mean() - 0.5) < 0.01  # still masked, not the zeros it holds
    assert np.array_equal(server.unmask(answers), x)
    with pytest.raises(SecAggError, match="both kinds of shares"):
        clients[1].unmask(["site-1", "site-2"], ["site-0"])


def test_shamir_threshold_and_sizes() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=3, holders=5)
    assert shamir.combine({i: shares[i] for i in (5, 1, 3)}, threshold=3) == secret
    assert shamir.combine({i: shares[i] for i in (2, 4, 5, 1)}, threshold=3) == secret
    with pytest.raises(SecAggError, match="2 shares cannot recover a 3-of-n"):
        shamir.combine({1: shares[1], 2: shares[2]}, threshold=3)
    with pytest.raises(SecAggError, match="multiple of 16"):
        shamir.split(b"x" * 20, threshold=2, holders=3)
    with pytest.raises(SecAggError, match="not possible"):
        shamir.split(secret, threshold=4, holders=3)


def test_misuse_is_refused() -> None:
    clients, server = _setup(3, 4)
    with pytest.raises(SecAggError, match="does not fit 4 clients"):
        SecAggServer({c.name: c.public_keys() for c in clients} | {"x": bytes(96)}, 4, round_id="r1", threshold=2)
    with pytest.raises(SecAggError, match="sent them twice"):
        server.add_shares("site-0", {})
    forged = dict(server.shares_for("site-0"))
    forged["site-1"] = forged["site-1"][:-1] + bytes([forged["site-1"][-1] ^ 1])
    with pytest.raises(SecAggError, match="fail authentication"):
        clients[0].mask(np.ones(4), forged)
    masked = clients[1].mask(np.ones(4), server.shares_for("site-1"))
    server.add("site-1", masked)
    with pytest.raises(SecAggError, match="two masked vectors"):
        server.add("site-1", masked)
    with pytest.raises(SecAggError, match=r"expected uint64\[4\]"):
        server.add("site-2", np.zeros(5, dtype=np.uint64))
    with pytest.raises(SecAggError, match="declared dropped"):
        clients[1].unmask(["site-0", "site-2"], ["site-1"])
    with pytest.raises(SecAggError, match="no masked input"):
        clients[2].unmask(["site-1", "site-2"], ["site-0"])
    with pytest.raises(SecAggError, match="NaN"):
        encode(np.array([np.nan]), num_clients=2)
    with pytest.raises(SecAggError, match="fixed-point range"):
        encode(np.array([1e15]), num_clients=2)
    with pytest.raises(SecAggError, match="32 bytes"):
        expand(b"short", 4)


def test_a_wrong_share_is_detected() -> None:
    values = [np.ones(16)] * 3
    clients, server = _setup(3, 16)
    for c in clients[:2]:
        server.add(c.name, c.mask(values[0], server.shares_for(c.name)))
    clients[2].mask(values[0], server.shares_for("site-2"))  # masked, then dropped
    answers = {c.name: dict(c.unmask(server.survivors, server.dropped)) for c in clients[:2]}
    kind, share = answers["site-0"]["site-2"]
    answers["site-0"]["site-2"] = (kind, bytes(len(share)))
    with pytest.raises(SecAggError, match="do not match its public key"):
        server.unmask(answers)
