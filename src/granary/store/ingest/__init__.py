"""Ingest raw files (JSONL, JSONL.gz/.zst, Parquet, CSV, text/markdown folders) into a dataset version."""

from __future__ import annotations

from granary.store.ingest.ingest import IngestReport, ingest
from granary.store.ingest.sink import BadRecordSink

__all__ = ["BadRecordSink", "IngestReport", "ingest"]
