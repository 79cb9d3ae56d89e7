"""Models past training: a registry with lineage back to the data, evaluation, compression, search, deployment.

Importing ``granary.models`` imports neither torch nor optuna; the names below load their module on first use.
Needs ``pip install 'granary[models]'`` (and ``granary[serve]`` to deploy behind the gateway).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Registry": "granary.models.registry",
    "ModelVersion": "granary.models.registry",
    "evaluate": "granary.models.evaluate",
    "make_plan": "granary.models.evaluate",
    "Gate": "granary.models.evaluate",
    "compress": "granary.models.compress",
    "CompressOptions": "granary.models.compress",
    "distill": "granary.models.distill",
    "DistillRecipe": "granary.models.distill",
    "SearchSpec": "granary.models.hpo",
    "search": "granary.models.hpo",
    "Deployer": "granary.models.deploy",
    "CanaryPolicy": "granary.models.deploy",
    "model_facts": "granary.models.card",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'granary.models' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if exc.name in ("torch", "safetensors", "optuna"):
            from granary.errors import MissingDependencyError

            raise MissingDependencyError(exc.name, "models") from None
        raise
