"""This process's place in a torchrun job, and the few collectives the runtime needs (no-ops when alone)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Rank facts and thin wrappers over ``torch.distributed`` that also work in a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None
    owned: bool = False  # this object initialised the process group (and closes it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    @classmethod
    def init(cls, *, timeout_s: float = 300.0) -> Dist:
        """Join the job torchrun started (``RANK``/``WORLD_SIZE`` in the environment), or run alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        owned = False
        if world > 1 and not dist.is_initialized():
            owned = True
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            rank, timeout = int(os.environ["RANK"]), timedelta(seconds=timeout_s)
            dist.init_process_group(backend, store=_attempt_store(rank, world, timeout), rank=rank, world_size=world,
                                    timeout=timeout)
        if dist.is_initialized():
            return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), owned=owned)
        return cls()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise sum (or max) of a few floats over ranks (float64, so sums are exact for small counts)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def _attempt_store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """The job's key-value store, with keys prefixed by torchrun's attempt number.

    torchrun's agent keeps its store across elastic restarts, so a restarted attempt could read the transport
    addresses of the previous (dead) workers and fail to connect; a prefix per attempt keeps them apart.
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent and rank == 0, timeout=timeout, multi_tenant=not agent)
    return dist.PrefixStore(f"granary/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
