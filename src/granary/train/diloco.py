"""Low-communication training: local steps on every rank, an outer step every H steps (DiLoCo, Douillard et al.).

Each rank runs its inner optimiser (AdamW) on its own batches without synchronising gradients. Every ``H`` steps
the ranks average their *pseudo-gradient* (the global parameters minus the local ones) with one all-reduce, and
an outer SGD with Nesterov momentum applies it to the global parameters, which every rank then copies. With
``H = 1``, plain SGD and outer learning rate 1 this is synchronous data parallelism in disguise; the bytes sent
per step are those of one all-reduce of the parameters divided by ``H``.

**Asynchronous outer steps** (``diloco_delay = d``, 0 < d < H): the all-reduce of the pseudo-gradients starts at
step ``kH`` without blocking (``async_op=True``) and training goes on; its result is applied ``d`` inner steps
later, at step ``kH + d``: the outer optimiser updates the global parameters, and each rank's local parameters
become the new global ones plus the local progress made since the all-reduce started (``local - snapshot``). The
communication is thus hidden behind ``d`` steps of computation, with a staleness bounded by ``d`` steps (the
outer update is ``d`` steps old when it lands). The order of operations does not depend on timing, so a run is
as reproducible as the synchronous one; an outer step in flight at a checkpoint is saved with it (its averaged
pseudo-gradient and snapshot, in each rank's extras) and applied after a resume at the step it was due.
"""

from __future__ import annotations

import time
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
        self.delay = cfg.diloco_delay
        self.pending: dict[str, Any] | None = None  # an outer step in flight: work, flat, snapshot, due
        self.wait_s = 0.0  # time spent blocked on outer all-reduces (what the delay hides)

    def after_step(self, step: int, *, last: bool = False) -> bool:
        """After inner step ``step`` (1-based): start an outer step when ``step`` is a multiple of H, and apply
        the one in flight when it is due (at once without a delay; always at the ``last`` step). Returns whether
        an outer step was applied."""
        applied = False
        if self.pending is not None and (step >= self.pending["due"] or last):
            self._apply()
            applied = True
        if step % self.h == 0:
            self._start(step)
            if self.delay == 0 or last:
                self._apply()
                applied = True
        return applied

    def _start(self, step: int) -> None:
        with torch.no_grad():
            snapshot = [p.detach().clone() for p in self.params]
            flat = torch.cat([(g - s).reshape(-1) for g, s in zip(self.global_params, snapshot, strict=True)])
            work = None
            if self.dist.enabled:
                self.counter.add(flat)
                work = tdist.all_reduce(flat, async_op=self.delay > 0)
        self.pending = {"work": work, "flat": flat, "snapshot": snapshot, "due": step + self.delay}

    def settle(self) -> None:
        """Wait for the all-reduce in flight, if any (before a checkpoint saves its result)."""
        if self.pending is not None and self.pending["work"] is not None:
            t0 = time.perf_counter()
            self.pending["work"].wait()
            self.wait_s += time.perf_counter() - t0
            self.pending["work"] = None

    def _apply(self) -> None:
        assert self.pending is not None
        self.settle()
        flat, snapshot = self.pending["flat"], self.pending["snapshot"]
        self.pending = None
        with torch.no_grad():
            if self.dist.enabled:
                flat = flat / self.dist.world_size
            offset = 0
            for g in self.global_params:
                g.grad = flat[offset:offset + g.numel()].view_as(g).clone()
                offset += g.numel()
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for g, p, s in zip(self.global_params, self.params, snapshot, strict=True):
                if self.delay:
                    p.sub_(s).add_(g)  # the new global parameters plus the local progress since the snapshot
                else:
                    p.copy_(g)

    def pending_state(self) -> dict[str, Any] | None:
        """The outer step in flight (its all-reduce finished), for a checkpoint's extras."""
        if self.pending is None:
            return None
        self.settle()
        return {"flat": self.pending["flat"], "snapshot": self.pending["snapshot"], "due": self.pending["due"]}

    def load_pending(self, state: dict[str, Any] | None) -> None:
        self.pending = None if state is None else {**state, "work": None}

    def state_dict(self) -> dict[str, Any]:
        return {"global": [g.detach() for g in self.global_params], "outer": self.outer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for g, saved in zip(self.global_params, state["global"], strict=True):
                g.copy_(saved)
        self.outer.load_state_dict(state["outer"])
