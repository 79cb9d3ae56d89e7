"""Tabular curation: validation with quarantine, casts, imputation, outliers, scaling, encodings, key dedup,
joins and unions with conflict rules, group-by and rebalancing, run by DuckDB over Arrow (extra ``tabular``)."""

from __future__ import annotations

from granary.curate.tabular.base import TABULAR_STEPS, TabularStep, step_from_dict
from granary.curate.tabular.pipeline import TabularPipeline, TabularResult, run_tabular
from granary.curate.tabular.runner import TabularRun, curate_table
from granary.curate.tabular.sharded import curate_table_sharded

__all__ = ["TABULAR_STEPS", "TabularPipeline", "TabularResult", "TabularRun", "TabularStep", "curate_table",
           "curate_table_sharded", "run_tabular", "step_from_dict"]
