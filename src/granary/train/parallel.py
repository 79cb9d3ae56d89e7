"""Parallelism helpers over PyTorch's own APIs: DDP (+ communication hooks), FSDP2, tensor parallel.

Each helper takes the model and returns the module to train; they can be used alone in a user's torchrun script.
Pipeline parallelism lives in :mod:`granary.train.pipeline`, the low-communication mode in
:mod:`granary.train.diloco`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from granary.errors import TrainError
from granary.train.dist import Dist
from granary.train.recipe import ParallelConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(cfg: ParallelConfig) -> torch.dtype | None:
    """The autocast dtype for modes that do not carry their own mixed-precision policy (FSDP2 does)."""
    if cfg.mode == "fsdp" or cfg.mixed_precision == "none":
        return None
    return _DTYPES[cfg.mixed_precision]


def wrap_ddp(model: nn.Module, cfg: ParallelConfig, dist: Dist) -> nn.Module:
    """DistributedDataParallel with the configured communication hook (bf16/fp16 compression or PowerSGD)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, device_ids=None if not torch.cuda.is_available() else [dist.local_rank])
    register_comm_hook(ddp, cfg)
    return ddp


def register_comm_hook(ddp: Any, cfg: ParallelConfig) -> Any:
    """Register a DDP communication hook; returns its state (PowerSGD keeps error feedback there)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if cfg.comm_hook == "none":
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


def wrap_fsdp(model: nn.Module, cfg: ParallelConfig, dist: Dist) -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root, with a mixed-precision policy (fp32 reduction)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=_DTYPES.get(cfg.mixed_precision), reduce_dtype=torch.float32)
    blocks = getattr(model, "blocks", None)
    for block in (blocks.values() if blocks is not None else []):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def wrap_tp(model: nn.Module, cfg: ParallelConfig, dist: Dist) -> nn.Module:
    """Tensor parallel over all ranks: attention and MLP projections column-/row-wise (Megatron layout)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    n_heads = getattr(getattr(model, "cfg", None), "n_heads", None)
    if n_heads is not None and n_heads % dist.world_size:
        raise TrainError(f"tensor parallel over {dist.world_size} ranks needs model.n_heads divisible by it "
                         f"(n_heads is {n_heads})", hint="change model.n_heads or --nproc-per-node")
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.world_size,))
    plan = {"attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(), "mlp.up": ColwiseParallel(), "mlp.down": RowwiseParallel()}
    for block in model.blocks.values():  # type: ignore[operator]
        parallelize_module(block, mesh, plan)
    return model
