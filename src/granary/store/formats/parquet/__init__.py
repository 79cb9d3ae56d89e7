"""Document shards: Parquet files with zstd compression and streaming-sized row groups (see README.md)."""

from __future__ import annotations

from granary.store.formats.parquet.writer import DocumentShardWriter, check_document_schema, check_table_schema

__all__ = ["DocumentShardWriter", "check_document_schema", "check_table_schema"]
