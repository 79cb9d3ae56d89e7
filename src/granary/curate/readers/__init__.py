"""Readers: where a pipeline's documents come from (a dataset version, JSONL, Parquet, text directories)."""

from granary.curate.readers.source import (
    READERS,
    ReaderConfig,
    Unit,
    check_batch,
    plan_units,
    read_unit,
    reader_for,
)

__all__ = ["READERS", "ReaderConfig", "Unit", "check_batch", "plan_units", "read_unit", "reader_for"]
