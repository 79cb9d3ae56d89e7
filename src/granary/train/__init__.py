"""Training runtime on torchrun: recipes, the reference GPT, Trainer/fit, checkpoints in the store, lineage.

Importing ``granary.train`` does not import torch; the names below load their module (and torch) on first use.
Needs the ``torch`` extra: ``pip install 'granary[torch]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

from granary.train.recipe import (
    CheckpointConfig,
    DataConfig,
    FaultConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    Recipe,
    load_recipe,
    recipe_from_dict,
)

_LAZY = {
    "Trainer": "granary.train.trainer",
    "FitResult": "granary.train.trainer",
    "fit": "granary.train.trainer",
    "GPT": "granary.train.model",
    "CheckpointManager": "granary.train.checkpoint",
    "MetricsLogger": "granary.train.metrics",
    "StepWatchdog": "granary.train.fault",
    "LossGuard": "granary.train.fault",
    "Dist": "granary.train.dist",
    "wrap_ddp": "granary.train.parallel",
    "wrap_fsdp": "granary.train.parallel",
    "wrap_tp": "granary.train.parallel",
}

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "FaultConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'granary.train' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if exc.name == "torch":
            from granary.errors import MissingDependencyError

            raise MissingDependencyError("torch", "torch") from None
        raise
