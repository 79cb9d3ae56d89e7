"""Partitioning of the global sample stream over steps, ranks, DataLoader workers and reader threads.

The stream is infinite: position ``p`` is epoch ``p // num_samples``, place ``p % num_samples`` of that epoch's
order. Global step ``k`` of a pass that starts at position ``P`` takes positions ``[P + k*B, P + (k+1)*B)``
where ``B = batch_size * world_size``; rank ``r`` gets the slice ``[r*b, (r+1)*b)`` of it. A pass is every step
that starts inside the epoch of ``P``, so all ranks get the same number of batches (balance), the last batch of
an epoch borrows the first positions of the next one (nothing dropped, nothing repeated), and the consumed
prefix is always ``[0, P + k*B)``: a state saved with one world size resumes exactly with any other.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(kw_only=True, frozen=True)
class Topology:
    """Where one reader sits: its rank among ``world_size`` ranks and its worker among ``num_workers``."""

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank={self.rank} world_size={self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker_id < self.num_workers:
            raise ValueError(f"worker_id must lie in [0, num_workers), got {self.worker_id}/{self.num_workers}")


def pass_steps(position: int, num_samples: int, global_batch: int) -> int:
    """Global steps in the pass starting at ``position``: those whose first position lies in its epoch."""
    if num_samples < 1 or global_batch < 1 or position < 0:
        raise ValueError(f"bad pass: position={position} num_samples={num_samples} global_batch={global_batch}")
    epoch_end = (position // num_samples + 1) * num_samples
    return -(-(epoch_end - position) // global_batch)


def rank_slice(position: int, step: int, *, batch_size: int, topology: Topology) -> tuple[int, int]:
    """Global positions ``[start, stop)`` of this rank's batch at ``step`` of the pass starting at ``position``."""
    start = position + step * batch_size * topology.world_size + topology.rank * batch_size
    return start, start + batch_size


def worker_steps(num_steps: int, worker_id: int, num_workers: int) -> range:
    """The steps one worker (or reader thread) produces: round robin, the order DataLoader collects them in."""
    return range(worker_id, num_steps, num_workers)


def detect_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: the arguments, else torch.distributed when initialised, else RANK/WORLD_SIZE, else 0/1."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return (dist.get_rank() if rank is None else rank,
                    dist.get_world_size() if world_size is None else world_size)
    env_rank = int(os.environ.get("RANK", "0"))
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    return (env_rank if rank is None else rank), (env_world if world_size is None else world_size)


def detect_worker() -> tuple[int, int]:
    """This process's DataLoader worker id and worker count (0, 1 outside DataLoader workers)."""
    if "torch" not in sys.modules:
        return 0, 1
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
