"""Goodput model of a training job: throughput x statistical efficiency, fitted online from what the job reports.

As in Pollux (Qiao et al., OSDI 2021): one training step on ``K`` GPUs over ``N`` nodes with ``m`` samples per GPU
takes ``T = (T_grad^g + T_sync^g)^(1/g)`` where ``T_grad = a_grad + b_grad * m`` (compute) and ``T_sync`` is 0 on
one GPU, ``a_local + b_local * (K - 2)`` inside one node and ``a_node + b_node * (K - 2)`` across nodes (all-reduce;
``g`` >= 1 says how much compute and communication overlap). Throughput is ``M / T`` for the global batch
``M = K * m``. Statistical efficiency, relative to the batch ``M0`` the job was tuned for, is
``E(M) = (phi + M0) / (phi + M)`` with ``phi`` the gradient noise scale (McCandlish et al. 2018): progress per sample
drops as the batch outgrows the noise scale. Goodput = throughput x efficiency, in M0-equivalent samples per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

_PARAMS = ("a_grad", "b_grad", "a_local", "b_local", "a_node", "b_node", "gamma")


@dataclass(kw_only=True, frozen=True)
class ThroughputParams:
    """Step-time model parameters (seconds; ``b_grad`` per sample, ``b_local``/``b_node`` per extra GPU).

    The defaults are the prior used before a job has reported anything: a small model whose step is compute-bound
    on one node and pays a noticeable all-reduce across nodes.
    """

    a_grad: float = 0.02
    b_grad: float = 0.002
    a_local: float = 0.01
    b_local: float = 0.002
    a_node: float = 0.05
    b_node: float = 0.01
    gamma: float = 1.5

    def __post_init__(self) -> None:
        for name in _PARAMS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"ThroughputParams.{name} must be finite and >= 0, got {value}")
        if not 1.0 <= self.gamma <= 10.0:
            raise ValueError(f"ThroughputParams.gamma must be in [1, 10], got {self.gamma}")

    def as_array(self) -> np.ndarray:
        """The parameters in ``_PARAMS`` order."""
        return np.array([getattr(self, n) for n in _PARAMS], dtype=np.float64)


def step_time(p: ThroughputParams | np.ndarray, gpus: np.ndarray | int, nodes: np.ndarray | int,
              local_batch: np.ndarray | float) -> np.ndarray:
    """Seconds per step (vectorized over its array arguments)."""
    a = p.as_array() if isinstance(p, ThroughputParams) else p
    k = np.asarray(gpus, dtype=np.float64)
    n = np.asarray(nodes, dtype=np.float64)
    m = np.asarray(local_batch, dtype=np.float64)
    t_grad = a[0] + a[1] * m
    extra = np.maximum(k - 2.0, 0.0)
    t_sync = np.where(n > 1, a[4] + a[5] * extra, a[2] + a[3] * extra)
    t_sync = np.where(k > 1, t_sync, 0.0)
    g = a[6]
    return np.asarray((t_grad**g + t_sync**g) ** (1.0 / g))


def efficiency(batch: np.ndarray | float, base_batch: float, noise_scale: float) -> np.ndarray:
    """Statistical efficiency of global batch ``batch`` relative to ``base_batch``: ``(phi + M0) / (phi + M)``."""
    return np.asarray((noise_scale + base_batch) / (noise_scale + np.asarray(batch, dtype=np.float64)))


def noise_scale(sq_norm_small: float, sq_norm_big: float, batch_small: float, batch_big: float) -> float:
    """Gradient noise scale ``B = tr(S) / |G|^2`` from squared gradient norms measured at two batch sizes.

    ``sq_norm_small`` is ``|g|^2`` of one GPU's gradient (batch ``batch_small``), ``sq_norm_big`` of the all-reduced
    one (``batch_big``): McCandlish et al., "An Empirical Model of Large-Batch Training", appendix A.1.

    Raises:
        ValueError: the batches are not increasing.
    """
    if not 0 < batch_small < batch_big:
        raise ValueError(f"need 0 < batch_small < batch_big, got {batch_small}, {batch_big}")
    g2 = (batch_big * sq_norm_big - batch_small * sq_norm_small) / (batch_big - batch_small)
    trace = (sq_norm_small - sq_norm_big) / (1.0 / batch_small - 1.0 / batch_big)
    return float(max(trace, 0.0) / max(g2, 1e-12))


def nodes_for(gpus: int, gpus_per_node: int) -> int:
    """Nodes an allocation of ``gpus`` spans when packed (what the policy assumes)."""
    return max(1, -(-gpus // max(1, gpus_per_node)))


@dataclass
class GoodputModel:
    """One job's goodput model: throughput parameters (prior, then fitted), noise scale, batch limits.

    Args:
        params: current throughput parameters (start: a prior).
        base_batch: the batch size ``M0`` the job was tuned for (efficiency 1).
        min_batch, max_batch: the global batch sizes the scheduler may choose.
        max_local_batch: the most samples one GPU holds (memory); a larger share is gradient accumulation.
        noise_scale: gradient noise scale ``phi`` (prior until the job reports one).
        prior_weight: how strongly a fit is pulled towards ``params`` (relative to one observation).
    """

    params: ThroughputParams = field(default_factory=ThroughputParams)
    base_batch: int = 32
    min_batch: int = 32
    max_batch: int = 32
    max_local_batch: int = 1 << 30
    noise_scale: float = 1000.0
    prior_weight: float = 0.001
    observations: list[tuple[int, int, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.base_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch ({self.min_batch}) <= base_batch ({self.base_batch}) <= "
                             f"max_batch ({self.max_batch})")
        if self.max_local_batch < 1 or self.noise_scale < 0:
            raise ValueError("max_local_batch must be >= 1 and noise_scale >= 0")
        self._prior = self.params

    # ------------------------------------------------------------ the model
    def step_time(self, gpus: int, nodes: int, batch: np.ndarray | float) -> np.ndarray:
        """Seconds per step at global batch ``batch`` (gradient accumulation past ``max_local_batch``)."""
        m = np.asarray(batch, dtype=np.float64) / gpus
        accum = np.maximum(1.0, np.ceil(m / self.max_local_batch))
        t = step_time(self.params, gpus, nodes, m / accum)
        grad = self.params.a_grad + self.params.b_grad * (m / accum)
        return np.asarray(t + (accum - 1.0) * grad)

    def goodput(self, gpus: int, nodes: int, batch: np.ndarray | float) -> np.ndarray:
        """M0-equivalent samples per second."""
        b = np.asarray(batch, dtype=np.float64)
        return np.asarray(b / self.step_time(gpus, nodes, b) * efficiency(b, self.base_batch, self.noise_scale))

    def best_batch(self, gpus: int, nodes: int) -> tuple[int, float]:
        """The global batch in ``[min_batch, max_batch]`` (at least one sample per GPU) with the highest goodput,
        and that goodput."""
        lo, hi = max(self.min_batch, gpus), self.max_batch
        if lo > hi:
            lo = hi = max(hi, gpus)
        grid = np.unique(np.round(np.geomspace(lo, hi, 48)) if hi > lo else np.array([float(lo)]))
        g = self.goodput(gpus, nodes, grid)
        i = int(np.argmax(g))
        return int(grid[i]), float(g[i])

    def speedups(self, sizes: list[int], gpus_per_node: int, ref_gpus: int) -> np.ndarray:
        """Goodput at each allocation size (best batch, packed nodes) over goodput at ``ref_gpus`` with the
        base batch - how much faster than as submitted the job progresses."""
        ref = float(self.goodput(ref_gpus, nodes_for(ref_gpus, gpus_per_node), max(self.base_batch, ref_gpus)))
        return np.array([self.best_batch(k, nodes_for(k, gpus_per_node))[1] / ref for k in sizes])

    # -------------------------------------------------------- online fitting
    def report(self, gpus: int, nodes: int, local_batch: float, step_time_s: float) -> None:
        """Record a measured step (GPUs, nodes, samples per GPU, seconds); :meth:`fit` uses every record."""
        if gpus < 1 or nodes < 1 or local_batch <= 0 or not step_time_s > 0:
            raise ValueError(f"bad step report: gpus={gpus} nodes={nodes} local_batch={local_batch} "
                             f"step_time_s={step_time_s}")
        self.observations.append((gpus, nodes, float(local_batch), float(step_time_s)))

    def report_noise_scale(self, phi: float, *, smoothing: float = 0.9) -> None:
        """Fold a measured gradient noise scale into the model (exponential moving average)."""
        if not phi >= 0:
            raise ValueError(f"noise scale must be >= 0, got {phi}")
        self.noise_scale = smoothing * self.noise_scale + (1.0 - smoothing) * phi

    def fit(self) -> ThroughputParams:
        """Fit the throughput parameters to every reported step (least squares on log step time, pulled
        towards the prior so that configurations never observed, e.g. multi-node, keep sensible values)."""
        if not self.observations:
            return self.params
        from scipy.optimize import least_squares

        obs = np.array(self.observations, dtype=np.float64)
        k, n, m, t = obs.T
        prior = self._prior.as_array()
        floor = 1e-6
        w = math.sqrt(self.prior_weight)

        def residuals(x: np.ndarray) -> np.ndarray:
            p = np.concatenate([np.exp(x[:6]), x[6:]])
            fit = np.log(step_time(p, k, n, m)) - np.log(t)
            pull = w * (x[:6] - np.log(prior[:6] + floor))
            return np.concatenate([fit, pull])

        x0 = np.concatenate([np.log(self.params.as_array()[:6] + floor), [self.params.gamma]])
        lower = np.concatenate([np.full(6, math.log(floor)), [1.0]])
        upper = np.concatenate([np.full(6, math.log(1e4)), [10.0]])
        res = least_squares(residuals, np.clip(x0, lower + 1e-9, upper - 1e-9), bounds=(lower, upper))
        p = np.concatenate([np.exp(res.x[:6]), res.x[6:]])
        self.params = ThroughputParams(**{name: float(v) for name, v in zip(_PARAMS, p, strict=True)})
        return self.params

    def copy(self) -> GoodputModel:
        """An independent copy (same parameters, no observations)."""
        return replace(self, observations=[])
