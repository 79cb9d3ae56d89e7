"""The parameter server's state, without processes or sockets: versioned parameters and bounded-staleness updates.

Workers pull the parameters at some version ``b``, compute a gradient on one batch and push it back. When the
server drains its queue at version ``v`` the gradient's *staleness* is ``v - b`` (how many updates other workers
made in between). The rules, in the order gradients arrived:

- staleness above the bound ``ps_staleness``: **rejected**; its batch goes back to the head of the work queue and
  is computed again on fresh parameters, so no sample is skipped and no update is older than the bound;
- otherwise **applied**, one optimiser step (one new version) per gradient;
- gradients waiting together that were computed from the *same* version are one step, their mean. Two workers
  tied at the bound would otherwise see the second one rejected because the first one's step made it one
  version too old; averaged, both count.

:meth:`ParamServerState.submit` may be called from any thread; :meth:`~ParamServerState.drain` and
:meth:`~ParamServerState.snapshot` from one at a time (:mod:`granary.train.ps_run` holds its lock around them).
Gradients submitted while another thread drains wait for the next drain, which is how ties arise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Gradient:
    """One worker's gradient (flattened over the parameters), computed at ``base_version`` on batch ``batch_id``."""

    worker_id: int
    base_version: int
    grad: torch.Tensor
    loss: float
    batch_id: int


@dataclass(frozen=True)
class Applied:
    """One optimiser step: the version it produced and what went into it."""

    version: int
    workers: list[int]
    batch_ids: list[int]
    staleness: list[int]
    loss: float


@dataclass
class Drained:
    """What one drain of the queue did."""

    applied: list[Applied] = field(default_factory=list)
    rejected: list[Gradient] = field(default_factory=list)
    dropped: list[Gradient] = field(default_factory=list)  # arrived after the last step (``stop_at``)


class ParamServerState:
    """Versioned parameters updated by an optimiser from pushed gradients, with a staleness bound.

    Args:
        params: the server's parameters (updated in place).
        optimizer: an optimiser over ``params``.
        staleness_bound: the largest staleness a gradient may have and still be applied (>= 0).
        lr_at: the learning rate of the step that produces version ``v + 1`` from version ``v`` (or None: the
            optimiser's own).
        version: the version of ``params`` (the number of steps behind them; a resumed run starts at its step).
    """

    def __init__(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, *, staleness_bound: int,
                 lr_at: Callable[[int], float] | None = None, version: int = 0) -> None:
        if staleness_bound < 0:
            raise ValueError(f"staleness_bound must be >= 0, got {staleness_bound}")
        self.params = list(params)
        self.optimizer = optimizer
        self.bound = staleness_bound
        self.lr_at = lr_at
        self.version = version
        self.numel = sum(p.numel() for p in params)
        self.queue: list[Gradient] = []
        self.rejected_total = 0
        self._lock = threading.Lock()

    def submit(self, gradient: Gradient) -> None:
        """Queue a gradient (applied or rejected at the next :meth:`drain`)."""
        if gradient.grad.numel() != self.numel:
            raise ValueError(f"worker {gradient.worker_id} pushed {gradient.grad.numel()} gradient values; the "
                             f"parameters have {self.numel} (a worker built another model shape)")
        if gradient.base_version > self.version:
            raise ValueError(f"worker {gradient.worker_id} pushed a gradient of version {gradient.base_version}, "
                             f"newer than the server's {self.version}")
        with self._lock:
            self.queue.append(gradient)

    def drain(self, *, stop_at: int | None = None) -> Drained:
        """Apply or reject every queued gradient, in arrival order (see the module's rules); once the version
        reaches ``stop_at`` the rest are dropped."""
        with self._lock:
            queue, self.queue = self.queue, []
        groups: dict[int, list[Gradient]] = {}  # base version -> its gradients; dicts keep first-arrival order
        for g in queue:
            groups.setdefault(g.base_version, []).append(g)
        out = Drained()
        for base, group in groups.items():
            if stop_at is not None and self.version >= stop_at:
                out.dropped.extend(group)
                continue
            if self.version - base > self.bound:
                out.rejected.extend(group)
                self.rejected_total += len(group)
                continue
            out.applied.append(self._step(group))
        return out

    def _step(self, group: list[Gradient]) -> Applied:
        staleness = [self.version - g.base_version for g in group]
        mean = group[0].grad if len(group) == 1 else torch.stack([g.grad for g in group]).mean(dim=0)
        offset = 0
        for p in self.params:
            p.grad = mean[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()
        if self.lr_at is not None:
            for pg in self.optimizer.param_groups:
                pg["lr"] = self.lr_at(self.version)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return Applied(version=self.version, workers=[g.worker_id for g in group],
                       batch_ids=[g.batch_id for g in group], staleness=staleness,
                       loss=sum(g.loss for g in group) / len(group))

    def snapshot(self) -> tuple[int, torch.Tensor]:
        """(version, a flat copy of the parameters): what a worker pulls."""
        with torch.no_grad():
            return self.version, torch.cat([p.detach().reshape(-1) for p in self.params]).clone()


def load_flat(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy a flat parameter vector (from :meth:`ParamServerState.snapshot`) into ``params``."""
    if flat.numel() != sum(p.numel() for p in params):
        raise ValueError(f"a flat vector of {flat.numel()} values does not fit parameters of "
                         f"{sum(p.numel() for p in params)}")
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def flat_grad(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameters' gradients as one flat vector (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                      for p in params])

