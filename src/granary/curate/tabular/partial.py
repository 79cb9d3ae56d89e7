"""Mergeable partial statistics of table shards: moments, value counts, and exact quantiles in two rounds.

A sharded tabular run fits a step's statistics without gathering the rows: each shard summarises its
values, the driver merges the summaries (in shard order, so the result does not depend on which worker
ran which shard) and turns them into the step's fitted statistics.

Exact quantiles take two rounds. First each shard sends a sorted sketch (every ``s``-th of its sorted
values); from the sketches the driver brackets each wanted rank between two values whose global ranks it
can bound. Then each shard sends how many of its values lie below the bracket and the values inside it;
the driver sorts only those and reads the order statistic exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SKETCH_POINTS = 1024


@dataclass
class Moments:
    """Count, mean, sum of squared deviations (M2), min and max of a shard's non-null values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """The moments of ``x`` (non-null float values)."""
        if not len(x):
            return cls()
        mean = float(np.mean(x))
        return cls(n=len(x), mean=mean, m2=float(np.sum(np.square(x - mean))), min=float(np.min(x)),
                   max=float(np.max(x)))

    def merge(self, other: Moments) -> Moments:
        """Both shards' moments (Chan et al.'s parallel update)."""
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n=n, mean=self.mean + delta * other.n / n,
                       m2=self.m2 + other.m2 + delta * delta * self.n * other.n / n,
                       min=min(self.min, other.min), max=max(self.max, other.max))  # type: ignore[type-var]

    @property
    def std(self) -> float | None:
        """The population standard deviation (None without values)."""
        return math.sqrt(self.m2 / self.n) if self.n else None


def merge_moments(parts: list[Moments]) -> Moments:
    """Merge in the order given."""
    out = Moments()
    for p in parts:
        out = out.merge(p)
    return out


def value_counts(values: list[Any], counts: list[int]) -> dict[Any, int]:
    """A shard's value counts as a plain dict (nulls left out by the caller)."""
    return {v: int(n) for v, n in zip(values, counts, strict=True)}


def merge_counts(parts: list[dict[Any, int]]) -> dict[Any, int]:
    """Sum value counts."""
    out: dict[Any, int] = {}
    for p in parts:
        for v, n in p.items():
            out[v] = out.get(v, 0) + n
    return out


def most_frequent(counts: dict[Any, int], k: int) -> list[Any]:
    """The ``k`` most frequent values, ties broken by the smaller value (as ``ORDER BY count DESC, value``)."""
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


@dataclass
class Sketch:
    """Round one of an exact quantile: a shard's count and every ``step``-th of its sorted values."""

    n: int
    step: int
    points: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, points: int = SKETCH_POINTS) -> Sketch:
        step = max(1, -(-len(x) // points))
        return cls(n=len(x), step=step, points=np.sort(x)[::step].copy())


def _rank_bounds(sketches: list[Sketch], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on the number of values (over all shards) strictly below each of ``values``."""
    lo = np.zeros(len(values), dtype=np.int64)
    hi = np.zeros(len(values), dtype=np.int64)
    for s in sketches:
        m = np.searchsorted(s.points, values, side="left")  # sketch points below each value
        lo += np.where(m > 0, (m - 1) * s.step + 1, 0)
        hi += np.minimum(m * s.step, s.n)
    return lo, hi


def brackets(sketches: list[Sketch], ranks: list[int]) -> list[tuple[float, float]]:
    """For each 0-based global rank, values ``lo <= x[rank] < hi`` (infinite where the sketches cannot bound)."""
    cands = np.unique(np.concatenate([s.points for s in sketches] or [np.empty(0)]))
    below_lo, below_hi = _rank_bounds(sketches, cands)
    out = []
    for r in ranks:
        at_least = np.flatnonzero(below_hi <= r)  # at most r values below v: x[r] >= v
        beyond = np.flatnonzero(below_lo >= r + 1)  # at least r + 1 values below v: x[r] < v
        out.append((float(cands[at_least[-1]]) if len(at_least) else -math.inf,
                    float(cands[beyond[0]]) if len(beyond) else math.inf))
    return out


def window(x: np.ndarray, lo: float, hi: float) -> tuple[int, np.ndarray]:
    """Round two: how many values are below ``lo``, and the values in ``[lo, hi)``."""
    inside = x[(x >= lo) & (x < hi)] if hi != math.inf else x[x >= lo]
    return int(np.count_nonzero(x < lo)), inside


def order_statistic(rank: int, parts: list[tuple[int, np.ndarray]]) -> float:
    """The value of 0-based global ``rank`` from every shard's window of one bracket."""
    below = sum(p[0] for p in parts)
    inside = np.sort(np.concatenate([p[1] for p in parts]))
    i = rank - below
    if not 0 <= i < len(inside):
        raise AssertionError(f"rank {rank} fell outside its bracket ({below} below, {len(inside)} inside)")
    return float(inside[i])


def quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """The ranks around quantile ``q`` of ``n`` values and the interpolation weight (``quantile_cont``)."""
    pos = (n - 1) * q
    lo = math.floor(pos)
    return lo, min(lo + 1, n - 1), pos - lo


def interpolate(lo: float, hi: float, frac: float) -> float:
    """Linear interpolation between neighbouring order statistics."""
    return lo if frac == 0 or lo == hi else lo + frac * (hi - lo)


def exact_quantiles(x: np.ndarray, qs: list[float]) -> list[float | None]:
    """Quantiles of one array with the same ranks and interpolation as the two-round merge."""
    if not len(x):
        return [None] * len(qs)
    out: list[float | None] = []
    for q in qs:
        a, b, frac = quantile_ranks(len(x), q)
        part = np.partition(x, [a, b]) if b != a else np.partition(x, a)
        out.append(interpolate(float(part[a]), float(part[b]), frac))
    return out
