"""Sample orders: pure functions of (num_samples, seed, epoch) to a bijection over sample ids, in a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

_MUL1 = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_MUL3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


class Order(Protocol):
    """The order of one epoch: position i of the epoch holds sample ``order.take(i)``."""

    num_samples: int

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids (int64) at the given epoch positions (each in ``[0, num_samples)``)."""
        ...


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer over a uint64 array (a fast, well-mixing hash)."""
    x = (x ^ (x >> _S30)) * _MUL2
    x = (x ^ (x >> _S27)) * _MUL3
    return x ^ (x >> _S31)


def epoch_keys(seed: int, epoch: int, count: int, salt: int = 0) -> np.ndarray:
    """``count`` uint64 round keys derived from (seed, epoch, salt); distinct epochs give unrelated keys."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed} epoch={epoch}")
    return np.random.SeedSequence([seed, epoch, salt, 0x6772616E]).generate_state(count, dtype=np.uint64)


class IdentityOrder:
    """No shuffle: position i holds sample i (for evaluation and debugging)."""

    def __init__(self, num_samples: int, seed: int = 0, epoch: int = 0) -> None:
        self.num_samples = num_samples

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at the given positions (the positions themselves)."""
        return np.asarray(positions, dtype=np.int64)


class FeistelOrder:
    """A global shuffle: a keyed balanced Feistel network with cycle walking, a bijection of ``[0, n)``.

    Any position is computed in O(1) without materialising the permutation, so the order of a billion
    samples costs no memory and resuming at any position is instant.
    """

    rounds = 6

    def __init__(self, num_samples: int, seed: int, epoch: int) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        bits = max(2, int(num_samples - 1).bit_length())
        bits += bits % 2
        self._half = np.uint64(bits // 2)
        self._mask = np.uint64((1 << (bits // 2)) - 1)
        self._keys = epoch_keys(seed, epoch, self.rounds)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix64((right + key) * _MUL1) & self._mask)
        return (left << self._half) | right

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at the given epoch positions (cycle walking keeps results inside ``[0, n)``)."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.num_samples):
            raise ValueError(f"positions must lie in [0, {self.num_samples}), got {pos.min()}..{pos.max()}")
        y = self._encrypt(pos.astype(np.uint64))
        n = np.uint64(self.num_samples)
        out_of_range = y >= n
        while out_of_range.any():
            y[out_of_range] = self._encrypt(y[out_of_range])
            out_of_range = y >= n
        return y.astype(np.int64)


class BlockOrder:
    """A local shuffle for remote data: contiguous blocks of samples in a global random order, samples
    shuffled within a window of ``window`` blocks. Fewer distinct blocks per batch, so far less to fetch.
    """

    block_samples = 64
    window = 16

    def __init__(self, num_samples: int, seed: int, epoch: int) -> None:
        self.num_samples = num_samples
        self._num_blocks = -(-num_samples // self.block_samples)
        # Only full blocks move, so every window but the last holds exactly window * block_samples samples.
        self._num_full = num_samples // self.block_samples
        self._blocks = FeistelOrder(max(self._num_full, 1), seed, epoch)
        self._seed, self._epoch = seed, epoch

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at the given positions: position -> (window, slot) -> (block, offset) -> sample."""
        pos = np.asarray(positions, dtype=np.int64)
        out = np.empty_like(pos)
        span = self.block_samples * self.window
        for w in np.unique(pos // span).tolist():
            sel = pos // span == w
            first_block = w * self.window
            slots = np.arange(first_block, min(first_block + self.window, self._num_blocks))
            blocks = slots.copy()
            moving = slots < self._num_full
            blocks[moving] = self._blocks.take(slots[moving])
            starts = blocks * self.block_samples
            sizes = np.minimum(self.block_samples, self.num_samples - starts)
            cum = np.concatenate([[0], np.cumsum(sizes)])
            inner = FeistelOrder(int(cum[-1]), self._seed, self._epoch * 1_000_003 + w + 1)
            slot = inner.take(pos[sel] - w * span)
            k = np.searchsorted(cum, slot, side="right") - 1
            out[sel] = starts[k] + (slot - cum[k])
        return out


OrderFactory = Callable[[int, int, int], Order]

SHUFFLES: dict[str, OrderFactory] = {
    "none": IdentityOrder,
    "global": FeistelOrder,
    "block": BlockOrder,
}


def make_order(name: str, num_samples: int, *, seed: int, epoch: int) -> Order:
    """The order of one epoch from the shuffle registry (``none``, ``global``, ``block``)."""
    try:
        factory = SHUFFLES[name]
    except KeyError:
        raise ValueError(f"unknown shuffle {name!r}; choose one of {sorted(SHUFFLES)}") from None
    return factory(num_samples, seed, epoch)
