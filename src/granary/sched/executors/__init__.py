"""Executors: what actually runs a job attempt (a registry: ``local``, ``slurm``, ``ray``, ``k8s``)."""

from __future__ import annotations

import importlib
from typing import Any

from granary.sched.errors import UnknownNameError
from granary.sched.executors.base import Executor

# name -> "module:Class", imported on first use so optional dependencies stay optional
EXECUTORS: dict[str, str] = {
    "local": "granary.sched.executors.local:LocalExecutor",
    "slurm": "granary.sched.executors.slurm:SlurmExecutor",
    "ray": "granary.sched.executors.ray:RayExecutor",
    "k8s": "granary.sched.executors.k8s:KubernetesExecutor",
}


def get_executor(name: str, **options: Any) -> Executor:
    """A new executor called ``name``."""
    if name not in EXECUTORS:
        raise UnknownNameError("executor", name, list(EXECUTORS))
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["EXECUTORS", "Executor", "get_executor"]
