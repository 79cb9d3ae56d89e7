"""Gradient communication of DDP through PyTorch's communication hooks, with the bytes each step sends.

``none`` is PyTorch's plain all-reduce hook (what DDP does by default), ``fp16``/``bf16`` compress each bucket
before the all-reduce, ``powersgd`` sends rank-``r`` factors P and Q with error feedback (Vogels et al., 2019).
The hooks are PyTorch's own; the count comes from handing them a ``dist`` that adds up the payload of every
collective they start (elements x element size, per rank; a ring all-reduce moves about twice that on the wire).
"""

from __future__ import annotations

import threading
import types
from typing import Any

import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from granary.train.recipe import ParallelConfig


class CommCounter:
    """Bytes handed to collectives (per rank), in total and since the last :meth:`take`."""

    def __init__(self) -> None:
        self.total = 0
        self._since = 0
        self._lock = threading.Lock()

    def add(self, tensors: Any) -> None:
        items = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        n = sum(t.numel() * t.element_size() for t in items if hasattr(t, "numel"))
        with self._lock:
            self.total += n
            self._since += n

    def take(self) -> int:
        """Bytes since the previous call (one optimiser step's worth when called once per step)."""
        with self._lock:
            n, self._since = self._since, 0
        return n


def _counting_dist(counter: CommCounter) -> types.SimpleNamespace:
    """A stand-in for ``torch.distributed`` inside the hook modules: the same functions, collectives counted."""

    def counted(fn: Any) -> Any:
        def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            counter.add(tensor)
            return fn(tensor, *args, **kwargs)

        return wrapper

    names = {n: getattr(dist, n) for n in dir(dist) if not n.startswith("__")}
    names["all_reduce"] = counted(dist.all_reduce)
    names["all_gather"] = counted(dist.all_gather)
    names["all_gather_into_tensor"] = counted(dist.all_gather_into_tensor)
    return types.SimpleNamespace(**names)


_PATCH_LOCK = threading.Lock()


def register_hook(ddp: Any, cfg: ParallelConfig, counter: CommCounter) -> Any:
    """Register the configured hook on a DDP module, counting its bytes into ``counter``; returns the hook state."""
    with _PATCH_LOCK:  # the hook modules look up `dist` at call time; one counting stand-in per process
        fake = _counting_dist(counter)
        default_hooks.dist = fake  # type: ignore[assignment]
        powerSGD_hook.dist = fake  # type: ignore[assignment]
    if cfg.comm_hook == "none":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        return None
    if cfg.comm_hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if cfg.comm_hook == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
        return None
    state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=cfg.powersgd_rank,
                                        start_powerSGD_iter=2, min_compression_rate=0.0,
                                        use_error_feedback=True, warm_start=True, random_seed=0)
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return state
