"""Low-communication training: local steps on every rank, an outer step every H steps (DiLoCo, Douillard et al.).

Each rank runs its inner optimiser (AdamW) on its own batches without synchronising gradients. Every ``H`` steps
the ranks average their *pseudo-gradient* (the global parameters minus the local ones) with one all-reduce, and
an outer SGD with Nesterov momentum applies it to the global parameters, which every rank then copies. With
``H = 1``, plain SGD and outer learning rate 1 this is synchronous data parallelism in disguise; the bytes sent
per step are those of one all-reduce of the parameters divided by ``H``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from granary.train.comm import CommCounter
from granary.train.dist import Dist
from granary.train.recipe import ParallelConfig


class DiLoCo:
    """The outer loop around a model whose inner optimiser steps locally. Call :meth:`after_step` each step."""

    def __init__(self, model: nn.Module, cfg: ParallelConfig, dist: Dist, counter: CommCounter | None = None) -> None:
        self.model = model
        self.h = max(1, cfg.diloco_h)
        self.dist = dist
        self.counter = counter or CommCounter()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.global_params = [p.detach().clone() for p in self.params]
        for g in self.global_params:
            g.requires_grad_(True)
        self.outer = torch.optim.SGD(self.global_params, lr=cfg.diloco_outer_lr, momentum=cfg.diloco_outer_momentum,
                                     nesterov=cfg.diloco_outer_momentum > 0)

    def after_step(self, step: int) -> bool:
        """After inner step ``step`` (1-based): synchronise when ``step`` is a multiple of H; returns whether it did."""
        if step % self.h:
            return False
        with torch.no_grad():
            deltas = [g - p.detach() for g, p in zip(self.global_params, self.params, strict=True)]
            flat = torch.cat([d.reshape(-1) for d in deltas])
            if self.dist.enabled:
                self.counter.add(flat)
                tdist.all_reduce(flat)
                flat /= self.dist.world_size
            offset = 0
            for g, d in zip(self.global_params, deltas, strict=True):
                g.grad = flat[offset:offset + d.numel()].view_as(d).clone()
                offset += d.numel()
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for g, p in zip(self.global_params, self.params, strict=True):
                p.copy_(g)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"global": [g.detach() for g in self.global_params], "outer": self.outer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for g, saved in zip(self.global_params, state["global"], strict=True):
                g.copy_(saved)
        self.outer.load_state_dict(state["outer"])
