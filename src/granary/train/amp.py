"""fp16 mixed precision: dynamic loss scaling with PyTorch's own gradient scalers.

With ``parallel.mixed_precision: fp16`` the forward runs under ``torch.autocast(dtype=float16)`` (FSDP2: its
``MixedPrecisionPolicy``) and the loss is multiplied by a dynamic scale before ``backward``, so that small
gradients survive fp16's narrow range. Before clipping, the gradients are unscaled and checked: a step whose
gradients hold an inf or a NaN is skipped (no optimiser update) and the scale is halved; after
``growth_interval`` clean steps it doubles. One process uses :class:`torch.amp.GradScaler`; a job uses
:class:`torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler` on the job's group, which sums the "found
an inf" flag over ranks, so every rank (DDP replicas, FSDP2 shards, TP shards, DiLoCo workers) skips the same
steps and holds the same scale. Gradients that are DTensors (FSDP2, TP) are unscaled through their local shards:
PyTorch's scaler refuses to mix them with its plain inf flag. The scaler's state is part of every checkpoint
(``scaler`` in the sharded state), so a resumed run continues with the scale it had, bit for bit.

The pipeline mode (``pp``) runs its own backward inside the schedule and is refused with fp16: use bf16.
"""

from __future__ import annotations

from typing import Any

import torch

from granary.errors import TrainError
from granary.train.dist import Dist
from granary.train.recipe import ParallelConfig


class LossScaler:
    """The run's loss scaler (a no-op unless the run trains in fp16).

    Args:
        cfg: the parallel config (``mixed_precision``, ``fp16_init_scale``, ``fp16_growth_interval``).
        mode: the parallel mode in use.
        dist: this process's place in the job.
        device_type: ``cpu`` or ``cuda``.
    """

    def __init__(self, cfg: ParallelConfig, mode: str, dist: Dist, device_type: str) -> None:
        self.enabled = cfg.mixed_precision == "fp16"
        self.scaler: Any = None
        self.skipped = 0
        if not self.enabled:
            return
        if mode == "pp":
            raise TrainError("parallel.mixed_precision fp16 is not available with parallel.mode pp: the pipeline "
                             "schedule runs backward itself, without a loss scale", hint="use mixed_precision bf16")
        init, interval = cfg.fp16_init_scale, cfg.fp16_growth_interval
        if dist.enabled:
            self.scaler = _sharded_scaler()(device_type, init_scale=init, growth_interval=interval,
                                            process_group=dist.group)
        else:
            self.scaler = torch.amp.GradScaler(device_type, init_scale=init, growth_interval=interval)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.enabled else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (before clipping) and find infs/NaNs (agreed over the job)."""
        if self.enabled:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimiser step unless the gradients overflowed; updates the scale. Returns whether it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        stepped = self.scaler.get_scale() >= before  # the scale backs off exactly when the step was skipped
        self.skipped += 0 if stepped else 1
        return stepped

    def skip(self) -> None:
        """A step dropped for another reason (the loss guard): forget this step's unscale state."""
        if self.enabled:
            self.scaler.update()

    @property
    def scale_value(self) -> float | None:
        return float(self.scaler.get_scale()) if self.enabled else None

    def state_dict(self) -> dict[str, Any]:
        return {**self.scaler.state_dict(), "skipped": self.skipped} if self.enabled else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.enabled and state:
            state = dict(state)
            self.skipped = int(state.pop("skipped", 0))
            self.scaler.load_state_dict(state)


def _sharded_scaler() -> type:
    """``ShardedGradScaler`` that unscales DTensor gradients through their local shards (in place)."""
    from collections import defaultdict

    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    from torch.distributed.tensor import DTensor

    class _Scaler(ShardedGradScaler):
        def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor,
                            found_inf: torch.Tensor, allow_fp16: bool = True) -> dict[torch.device, torch.Tensor]:
            grouped: dict[torch.device, dict[torch.dtype, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
            found: dict[torch.device, torch.Tensor] = {}
            with torch.no_grad():  # no grad: to_local() is the DTensor's own local storage
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        grad = param.grad
                        if grad is None:
                            continue
                        local = grad.to_local() if isinstance(grad, DTensor) else grad
                        grouped[local.device][local.dtype].append(local)
                for device, by_dtype in grouped.items():
                    flag = found.setdefault(device, found_inf.to(device))
                    inv = inv_scale.to(device)
                    for grads in by_dtype.values():
                        torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, inv)
            if not found:  # a rank without gradients still takes part in the flag's all-reduce
                assert self._scale is not None
                found[self._scale.device] = found_inf.to(self._scale.device)
            return found

    return _Scaler
