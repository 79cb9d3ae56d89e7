"""Mixing several versions with weights: a deterministic, low-discrepancy, resumable interleaving."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from granary.stream.shuffle import epoch_keys


@dataclass(kw_only=True, frozen=True)
class Mix:
    """A weighted mixture of dataset refs, streamed as one dataset.

    Position ``p`` of the mixed stream goes to a source by a tree of Bresenham (Sturmian) sequences: at every
    prefix of the stream each source's share is within ``len(sources) - 1`` samples of its target, and the
    count of each source before any position is a closed formula, so resuming costs nothing.

    Attributes:
        sources: dataset refs (``name``, ``name@branch``, ``name@tag``, ``name@id``).
        weights: non-negative weights, normalised to sum 1.
    """

    sources: tuple[str, ...]
    weights: tuple[float, ...]

    def __init__(self, sources: Sequence[str], *, weights: Sequence[float]) -> None:
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        self.__post_init__()

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("Mix needs at least one source")
        if len(self.sources) != len(self.weights):
            raise ValueError(f"Mix has {len(self.sources)} sources but {len(self.weights)} weights")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(self.weights)}")

    @property
    def fractions(self) -> tuple[float, ...]:
        """The weights normalised to sum 1."""
        total = sum(self.weights)
        return tuple(w / total for w in self.weights)


def _split(positions: np.ndarray, fraction: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Bresenham split: (goes to the first branch?, index inside its branch) for each position."""
    p = positions.astype(np.float64)
    before = np.floor(p * fraction + phase) - math.floor(phase)
    after = np.floor((p + 1.0) * fraction + phase) - math.floor(phase)
    first = after > before
    inner = np.where(first, before, positions - before).astype(np.int64)
    return first, inner


def assign(positions: np.ndarray, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and source-local position of each mixed-stream position (a pure function).

    Args:
        positions: int64 positions of the mixed stream.
        fractions: target share of each source (sum 1).
        seed: chooses the phase of each split, so different seeds interleave differently.

    Returns:
        ``(source, local)``: int64 arrays; ``local`` counts earlier positions given to the same source.
    """
    pos = np.asarray(positions, dtype=np.int64)
    source = np.full(pos.shape, len(fractions) - 1, dtype=np.int64)
    local = pos.copy()
    live = np.ones(pos.shape, dtype=bool)
    phases = epoch_keys(seed, 0, max(1, len(fractions)), salt=0x6D6978).astype(np.float64) / 2.0**64
    remaining = 1.0
    for k, share in enumerate(fractions[:-1]):
        fraction = 0.0 if remaining <= 0 else min(1.0, share / remaining)
        first, inner = _split(local[live], fraction, float(phases[k]))
        idx = np.flatnonzero(live)
        source[idx[first]] = k
        local[idx] = inner
        live[idx[first]] = False
        remaining -= share
    return source, local
