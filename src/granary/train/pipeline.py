"""Pipeline parallelism with ``torch.distributed.pipelining``: the GPT cut into one stage per rank.

Stage ``k`` of ``n`` keeps blocks ``[k*L/n, (k+1)*L/n)``; the first also keeps the embeddings, the last the final
norm and the head. Parameter names stay those of the whole model (blocks are keyed by index), so each stage's
checkpoint shards hold disjoint keys of one state dict. Schedules: ``gpipe`` (all forwards, then all backwards)
and ``1f1b`` (one forward, one backward in the steady state: at most ``n`` micro-batches of activations alive).
Every rank sees the same batch (no data parallelism across stages here).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from granary.errors import TrainError
from granary.train.dist import Dist
from granary.train.model import GPT, loss_fn
from granary.train.recipe import ParallelConfig


def cut_stage(model: GPT, stage: int, num_stages: int) -> GPT:
    """Keep only stage ``stage``'s parts of ``model`` (in place) and return it."""
    n = model.cfg.n_layers
    if n < num_stages:
        raise TrainError(f"pipeline parallel over {num_stages} ranks needs model.n_layers >= {num_stages} "
                         f"(n_layers is {n})", hint="add layers or use fewer ranks (--nproc-per-node)")
    first, last = stage * n // num_stages, (stage + 1) * n // num_stages
    for i in range(n):
        if not first <= i < last:
            del model.blocks[str(i)]
    if stage != 0:
        model.tok_emb = model.pos_emb = None
    if stage != num_stages - 1:
        model.norm = model.head = None
    return model


class Pipeline:
    """One rank's stage and schedule; :meth:`step` runs a whole batch (all micro-batches) forward and backward."""

    def __init__(self, model: GPT, cfg: ParallelConfig, dist: Dist, *, batch_size: int) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if batch_size % cfg.pp_microbatches:
            raise TrainError(f"data.batch_size {batch_size} is not a multiple of parallel.pp_microbatches "
                             f"{cfg.pp_microbatches}")
        if cfg.grad_accum != 1:
            raise TrainError("parallel.grad_accum must be 1 with pipeline parallel",
                             hint="micro-batches are parallel.pp_microbatches")
        self.dist = dist
        self.first = dist.rank == 0
        self.last = dist.rank == dist.world_size - 1
        self.module = cut_stage(model, dist.rank, dist.world_size)
        device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.stage = PipelineStage(self.module, dist.rank, dist.world_size, device)
        kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg.pp_schedule]
        self.schedule = kind(self.stage, n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward and backward of one batch; returns the mean micro-batch loss (on every rank)."""
        losses: list[torch.Tensor] = []
        if self.first and self.last:
            self.schedule.step(x, target=y, losses=losses)
        elif self.first:
            self.schedule.step(x)
        elif self.last:
            self.schedule.step(target=y, losses=losses)
        else:
            self.schedule.step()
        mine = float(torch.stack(losses).detach().mean()) if losses else 0.0
        return self.dist.all_reduce([mine])[0]  # only the last stage contributes


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, dist: Dist) -> float:
    """Clip by the norm over every stage's gradients (each rank holds different parameters)."""
    local = sum(float(p.grad.detach().float().pow(2).sum()) for p in params if p.grad is not None)
    total = math.sqrt(dist.all_reduce([local])[0])
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return total

