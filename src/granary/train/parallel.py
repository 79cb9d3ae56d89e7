"""Parallelism helpers over PyTorch's own APIs: DDP (+ communication hooks), FSDP2, tensor parallel.

Each helper takes the model and returns the module to train; they can be used alone in a user's torchrun script.
Pipeline parallelism lives in :mod:`granary.train.pipeline`, the low-communication mode in
:mod:`granary.train.diloco`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from granary.errors import TrainError
from granary.train.dist import Dist
from granary.train.recipe import ParallelConfig

if TYPE_CHECKING:
    from granary.train.comm import CommCounter

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(cfg: ParallelConfig) -> torch.dtype | None:
    """The autocast dtype for modes that do not carry their own mixed-precision policy (FSDP2 does)."""
    if cfg.mode in ("fsdp", "fsdp_tp") or cfg.mixed_precision == "none":
        return None
    return _DTYPES[cfg.mixed_precision]


def wrap_ddp(model: nn.Module, cfg: ParallelConfig, dist: Dist, counter: CommCounter | None = None) -> nn.Module:
    """DistributedDataParallel with the configured communication hook; its bytes are counted into ``counter``."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from granary.train.comm import CommCounter, register_hook

    ddp = DDP(model, device_ids=None if not torch.cuda.is_available() else [dist.local_rank])
    register_hook(ddp, cfg, counter or CommCounter())
    return ddp


STATELESS_HOOKS = frozenset({"none", "fp16", "bf16"})


def settle_ddp_buckets(ddp: nn.Module, tokens: torch.Tensor, loss_fn: Any, counter: CommCounter | None = None,
                       amp: torch.dtype | None = None) -> None:
    """Give a resumed DDP module the gradient buckets an uninterrupted run has at the same step.

    DDP reduces its first backward in buckets laid out in reverse parameter order and rebuilds them, at the next
    forward, in the order the gradients became ready. With more than two ranks, gloo's ring all-reduce adds each
    element's contributions in an order fixed by where the element lies in the bucket, so the first step after a
    resume (initial layout) would round differently from the same step of an uninterrupted run (rebuilt layout)
    and the runs would drift apart in the last bits. One throw-away forward and backward on ``tokens`` (a batch of
    zeros), with the random state restored and the gradients and the bytes it sent discarded, makes the next
    forward rebuild the buckets first. Only for stateless communication hooks (PowerSGD keeps state per step).
    """
    before = counter.total if counter is not None else 0
    devices = [torch.cuda.current_device()] if tokens.is_cuda else []
    device_type = "cuda" if tokens.is_cuda else "cpu"
    cast = torch.autocast(device_type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=devices):
        with cast:
            loss = loss_fn(ddp(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
    for param in ddp.parameters():
        param.grad = None
    if counter is not None:
        counter.total = before
        counter.take()


def wrap_fsdp(model: nn.Module, cfg: ParallelConfig, dist: Dist, mesh: Any = None) -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root, with a mixed-precision policy (fp32 reduction)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=_DTYPES.get(cfg.mixed_precision), reduce_dtype=torch.float32)
    blocks = getattr(model, "blocks", None)
    for block in (blocks.values() if blocks is not None else []):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def wrap_fsdp_tp(model: nn.Module, cfg: ParallelConfig, dist: Dist) -> nn.Module:
    """2-D: a ``(dp, tp)`` device mesh; tensor parallel over ``tp_size`` ranks (rows of the mesh), then FSDP2
    over the ``dp`` dimension. Ranks ``k*tp_size .. (k+1)*tp_size - 1`` hold one replica and read the same batches."""
    from torch.distributed.device_mesh import init_device_mesh

    tp = cfg.tp_size
    if tp < 1 or dist.world_size % tp:
        raise TrainError(f"parallel.tp_size {tp} does not divide the world size {dist.world_size}",
                         hint="pick tp_size dividing --nproc-per-node x nodes")
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world_size // tp, tp),
                            mesh_dim_names=("dp", "tp"))
    _tensor_parallel(model, mesh["tp"], tp)
    return wrap_fsdp(model, cfg, dist, mesh=mesh["dp"])


def wrap_tp(model: nn.Module, cfg: ParallelConfig, dist: Dist) -> nn.Module:
    """Tensor parallel over all ranks: attention and MLP projections column-/row-wise (Megatron layout)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world_size,))
    return _tensor_parallel(model, mesh, dist.world_size)


def _tensor_parallel(model: nn.Module, mesh: Any, ranks: int) -> nn.Module:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    n_heads = getattr(getattr(model, "cfg", None), "n_heads", None)
    if n_heads is not None and n_heads % ranks:
        raise TrainError(f"tensor parallel over {ranks} ranks needs model.n_heads divisible by it "
                         f"(n_heads is {n_heads})", hint="change model.n_heads, --nproc-per-node or tp_size")
    plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel()}
    for block in model.blocks.values():  # type: ignore[operator]
        parallelize_module(block, mesh, plan)
    return model


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip gradients by their total norm; works when DTensor (sharded) and plain gradients are mixed, as under
    tensor parallelism, where ``torch.nn.utils.clip_grad_norm_`` refuses the mix."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")
    kinds = {getattr(g, "device_mesh", None) for g in grads}  # one mesh (or none): PyTorch's own clipping
    if len(kinds) == 1:
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    squares = []
    for g in grads:
        n = torch.linalg.vector_norm(g.detach().float())
        squares.append((n.full_tensor() if hasattr(n, "full_tensor") else n) ** 2)
    total = float(torch.stack(squares).sum().sqrt())
    if total > limit:
        scale = limit / (total + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total
