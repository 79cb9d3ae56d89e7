"""The gradient noise scale of a data-parallel run, measured cheaply from gradients the step computes anyway.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018), appendix A.1: with ``|g_s|^2`` the squared
norm of a gradient over ``B_s`` samples (one rank's, before the all-reduce) and ``|g_b|^2`` over ``B_b`` samples (the
all-reduced one), ``|G|^2 ~ (B_b |g_b|^2 - B_s |g_s|^2) / (B_b - B_s)`` and ``tr(S) ~ (|g_s|^2 - |g_b|^2) /
(1/B_s - 1/B_b)`` are unbiased; each is smoothed (exponential moving average) on its own and the noise scale is
``B_simple = tr(S) / |G|^2``, what the scheduler's goodput model takes as ``phi`` (:mod:`granary.sched.goodput`).

Every ``every`` steps each rank adds up its own gradient's squared norm in post-accumulate hooks (DDP has not yet
copied the all-reduced values back into ``.grad`` then), the ranks average it (one all-reduce of one float), and the
step's all-reduced gradient norm (what clipping computed) gives ``|g_b|^2``. Rank 0 reports the estimate to the
scheduler (``GRANARY_REPORT_FILE``). Only plain DDP without gradient accumulation is measured; other modes report
nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class NoiseScale:
    """Estimate the gradient noise scale of a DDP run (see the module)."""

    def __init__(self, model: nn.Module, dist: Any, *, local_batch: int, every: int = 10,
                 smoothing: float = 0.9, enabled: bool = True) -> None:
        self.dist = dist
        self.small = float(local_batch)
        self.big = float(local_batch * dist.world_size)
        self.every = max(1, every)
        self.smoothing = smoothing
        self.enabled = enabled and dist.enabled and dist.world_size > 1
        self.value: float | None = None
        self._g2: float | None = None
        self._trace: float | None = None
        self._armed = False
        self._parts: list[torch.Tensor] = []
        self._steps = 0
        if self.enabled:
            self._armed = True  # measure the first step too
            for p in model.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self._hook)

    def _hook(self, param: torch.Tensor) -> None:
        if self._armed and param.grad is not None:
            self._parts.append(param.grad.detach().float().pow(2).sum())

    def discard(self) -> None:
        """Forget the gradients seen since the last step (a backward that was not a training step)."""
        self._parts = []

    def update(self, global_norm: float) -> float | None:
        """Call after each step with the all-reduced gradient norm (before clipping); returns the estimate."""
        if not self.enabled:
            return None
        self._steps += 1
        if self._armed:
            local = float(torch.stack(self._parts).sum()) if self._parts else 0.0
            self._parts = []
            small_sq = self.dist.all_reduce([local])[0] / self.dist.world_size
            big_sq = float(global_norm) ** 2
            if math.isfinite(small_sq) and math.isfinite(big_sq) and small_sq > 0:
                g2 = (self.big * big_sq - self.small * small_sq) / (self.big - self.small)
                trace = (small_sq - big_sq) / (1.0 / self.small - 1.0 / self.big)
                s = self.smoothing
                self._g2 = g2 if self._g2 is None else s * self._g2 + (1 - s) * g2
                self._trace = trace if self._trace is None else s * self._trace + (1 - s) * trace
                if self._g2 > 0:
                    self.value = max(self._trace, 0.0) / self._g2
                    if self.dist.rank == 0:
                        from granary.sched.checkpoint import report_noise_scale

                        report_noise_scale(self.value)
        self._armed = self._steps % self.every == self.every - 1
        return self.value
