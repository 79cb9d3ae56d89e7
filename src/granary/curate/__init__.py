"""Curation pipelines: clean, filter, deduplicate, redact PII, balance and report on document datasets.

Python::

    from granary.curate import PipelineSpec, curate
    spec = PipelineSpec.from_yaml("examples/pipelines/fineweb.yaml")
    result, report = curate(open_store(), "web@main", spec, "web-clean")

Steps are registered by short name (`granary.curate.step.STEPS`) and configured by kw-only dataclasses that
the YAML pipeline files map onto one to one.
"""

from __future__ import annotations

from granary.curate.api import curate
from granary.curate.readers import ReaderConfig
from granary.curate.runner import RunResult, run_pipeline
from granary.curate.spec import PipelineSpec, step_from_dict
from granary.curate.step import STEPS, DocBatch, GlobalStep, Step, StepConfig, register_step
from granary.curate.writers import ParquetDirSink, StoreSink

__all__ = [
    "STEPS",
    "DocBatch",
    "GlobalStep",
    "ParquetDirSink",
    "PipelineSpec",
    "ReaderConfig",
    "RunResult",
    "Step",
    "StepConfig",
    "StoreSink",
    "curate",
    "register_step",
    "run_pipeline",
    "step_from_dict",
]


def all_steps() -> dict[str, type[StepConfig]]:
    """Every registered step's config class, by name (imports all step modules)."""
    from granary.curate.spec import _load_steps

    _load_steps()
    return {k: v.config_class for k, v in sorted(STEPS.items())}
