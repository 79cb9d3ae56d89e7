"""The global sample stream: positions over epochs to sample ids, for one source or a mix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from granary.stream.mix import assign
from granary.stream.shuffle import Order, make_order


class SampleStream:
    """The infinite stream of one source: position ``p`` -> sample ``order(epoch=p // n).take(p % n)``.

    Args:
        num_samples: samples per epoch.
        shuffle: shuffle name (``none``, ``global``, ``block``).
        seed: shuffle seed; the order is a pure function of (num_samples, shuffle, seed, epoch, position).
    """

    def __init__(self, num_samples: int, *, shuffle: str, seed: int) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        make_order(shuffle, num_samples, seed=seed, epoch=0)  # validate the name early
        self._orders: dict[int, Order] = {}

    def order(self, epoch: int) -> Order:
        """The order of one epoch (the two most recent are kept)."""
        order = self._orders.get(epoch)
        if order is None:
            order = make_order(self.shuffle, self.num_samples, seed=self.seed, epoch=epoch)
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def samples(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at the given stream positions (any epochs)."""
        pos = np.asarray(positions, dtype=np.int64)
        epochs = pos // self.num_samples
        first, last = int(epochs.min()), int(epochs.max())
        if first == last:
            return self.order(first).take(pos - first * self.num_samples)
        out = np.empty_like(pos)
        for e in np.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self.order(e).take(pos[sel] - e * self.num_samples)
        return out


class MixedStream:
    """Several sample streams interleaved by weight (see :func:`granary.stream.mix.assign`)."""

    def __init__(self, streams: Sequence[SampleStream], fractions: Sequence[float], *, seed: int) -> None:
        self.streams = list(streams)
        self.fractions = list(fractions)
        self.seed = seed

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source index and sample id (in that source) of each position of the mixed stream."""
        if len(self.streams) == 1:
            return np.zeros(len(positions), dtype=np.int64), self.streams[0].samples(positions)
        source, local = assign(positions, self.fractions, self.seed)
        samples = np.empty_like(local)
        for k in np.unique(source).tolist():
            rows = source == k
            samples[rows] = self.streams[k].samples(local[rows])
        return source, samples
