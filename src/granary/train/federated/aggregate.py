"""Pure aggregation on flat update vectors: checks, norm bound, mean / trimmed mean / median, server optimisers.

An *update* is a site's model delta (local weights minus the round's global weights), flattened. Nothing here
logs or formats an update's values: errors and reports carry shapes, norms and counts only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from granary.train.federated.errors import FederatedError, UpdateRejected

Shapes = list[tuple[int, ...]]


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One float64 vector from a list of arrays."""
    if not arrays:
        return np.zeros(0)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vec: np.ndarray, shapes: Shapes, dtype: type = np.float32) -> list[np.ndarray]:
    """Arrays of ``shapes`` from a flat vector."""
    out: list[np.ndarray] = []
    at = 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(np.asarray(vec[at:at + n], dtype=dtype).reshape(shape))
        at += n
    if at != vec.size:
        raise FederatedError(f"a vector of {vec.size} values does not fill shapes totalling {at}")
    return out


def check_update(site: str, arrays: Sequence[np.ndarray], shapes: Shapes, *, norm_bound: float = 0.0) -> np.ndarray:
    """The flat update, or :class:`UpdateRejected` if malformed, non-finite or above ``norm_bound`` (0: off)."""
    got = [tuple(np.shape(a)) for a in arrays]
    if got != [tuple(s) for s in shapes]:
        raise UpdateRejected(site, f"{len(got)} arrays with shapes that do not match the model's {len(shapes)}")
    for a in arrays:
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            raise UpdateRejected(site, f"array of dtype {np.asarray(a).dtype}, expected floating point")
    vec = flatten(arrays)
    if not np.all(np.isfinite(vec)):
        raise UpdateRejected(site, f"{int(np.size(vec) - np.isfinite(vec).sum())} non-finite values")
    if norm_bound > 0:
        norm = float(np.linalg.norm(vec))
        if norm > norm_bound * (1 + 1e-6):
            raise UpdateRejected(site, f"L2 norm {norm:.4g} above the bound {norm_bound:g}")
    return vec


def clip(vec: np.ndarray, norm_bound: float) -> np.ndarray:
    """Scale ``vec`` down to L2 norm ``norm_bound`` (0: unchanged)."""
    if norm_bound <= 0:
        return vec
    norm = float(np.linalg.norm(vec))
    return vec * (norm_bound / norm) if norm > norm_bound else vec


def mean(updates: np.ndarray, weights: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Weighted mean of the rows."""
    w = np.asarray(weights, dtype=np.float64)
    return np.asarray((w[:, None] * updates).sum(axis=0) / w.sum())


def trimmed_mean(updates: np.ndarray, weights: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values (Yin et al. 2018)."""
    n = updates.shape[0]
    k = math.floor(trim_fraction * n)
    if n - 2 * k < 1:
        raise FederatedError(f"trimming {k} of {n} updates at each end leaves none")
    s = np.sort(updates, axis=0)
    return np.asarray(s[k:n - k].mean(axis=0))


def median(updates: np.ndarray, weights: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise median."""
    return np.asarray(np.median(updates, axis=0))


AGGREGATORS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "mean": mean, "trimmed-mean": trimmed_mean, "median": median,
}


class FedAvgOptimizer:
    """``global += server_lr * update`` (FedAvg and FedProx)."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(self, weights: np.ndarray, update: np.ndarray) -> np.ndarray:
        return weights + self.server_lr * update


class FedAdamOptimizer:
    """Adam on the averaged update taken as a pseudo-gradient (FedAdam, Reddi et al. 2021)."""

    def __init__(self, server_lr: float = 0.01, *, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, weights: np.ndarray, update: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(update), np.full_like(update, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * update
        self.v = self.beta2 * self.v + (1 - self.beta2) * update * update
        return weights + self.server_lr * self.m / (np.sqrt(self.v) + self.tau)


def server_optimizer(name: str, server_lr: float) -> FedAvgOptimizer | FedAdamOptimizer:
    """The server optimiser registered as ``name``."""
    if name in ("fedavg", "fedprox"):
        return FedAvgOptimizer(server_lr)
    if name == "fedadam":
        return FedAdamOptimizer(server_lr)
    raise FederatedError(f"unknown strategy {name!r}", hint="use fedavg, fedprox or fedadam")


def aggregate(updates: Sequence[np.ndarray], weights: Sequence[float], *, rule: str = "mean",
              trim_fraction: float = 0.25) -> np.ndarray:
    """Combine accepted flat updates with the rule registered as ``rule``."""
    fn = AGGREGATORS.get(rule)
    if fn is None:
        raise FederatedError(f"unknown aggregation {rule!r}", hint=f"use one of {sorted(AGGREGATORS)}")
    if not updates:
        raise FederatedError("no update to aggregate")
    return fn(np.stack(updates), np.asarray(weights, dtype=np.float64), trim_fraction)


def dp_noise_multiplier(epsilon: float, delta: float, rounds: int, sample_rate: float = 1.0) -> float:
    """Noise multiplier (std / norm bound) making ``rounds`` Gaussian releases (epsilon, delta)-DP (RDP accountant)."""
    from granary.train.dp import noise_multiplier

    return noise_multiplier(epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=rounds)


def dp_spent(noise: float, delta: float, rounds: int, sample_rate: float = 1.0) -> float:
    """Epsilon spent after ``rounds`` releases at ``noise`` (RDP accountant)."""
    from granary.train.dp import epsilon_spent

    return epsilon_spent(noise_multiplier=noise, delta=delta, sample_rate=sample_rate, steps=rounds)
