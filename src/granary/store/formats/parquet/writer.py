"""Writer that cuts a stream of Arrow batches into Parquet document shards of a target size."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from granary.errors import StoreError

COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3

ShardCallback = Callable[[Path, dict[str, Any]], None]


def check_document_schema(schema: pa.Schema) -> pa.Schema:
    """Require string ``id`` and ``text`` columns; return the schema with large strings narrowed."""
    for col in ("id", "text"):
        idx = schema.get_field_index(col)
        if idx < 0:
            raise StoreError(
                f"a documents dataset needs a {col!r} column; got columns {schema.names}",
                hint="rename your columns or ingest with `granary ingest`, which derives ids from content",
            )
        typ = schema.field(idx).type
        if typ == pa.large_string():
            schema = schema.set(idx, pa.field(col, pa.string()))
        elif typ != pa.string():
            raise StoreError(
                f"column {col!r} must be a string, got {typ}",
                hint=f"cast {col!r} to string before writing",
            )
    return schema.remove_metadata()


def check_table_schema(schema: pa.Schema) -> pa.Schema:
    """A ``table`` dataset takes any non-empty schema with distinct column names; large strings are narrowed."""
    if not schema.names:
        raise StoreError("a table needs at least one column")
    dup = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if dup:
        raise StoreError(f"column names repeat: {dup}", hint="rename the columns so each name is used once")
    for i, f in enumerate(schema):
        if f.type == pa.large_string():
            schema = schema.set(i, pa.field(f.name, pa.string(), f.nullable))
    return schema.remove_metadata()


class DocumentShardWriter:
    """Cut record batches into Parquet shards of about ``shard_size_bytes`` (uncompressed).

    Each shard is written in row groups of about ``row_group_bytes`` so that readers can stream a
    shard in bounded memory. When a shard is complete, ``on_shard(path, facts)`` is called with the
    local file and its facts (``rows``, ``raw_bytes``, ``row_groups``).

    Args:
        directory: local staging directory for the files.
        schema: the schema every batch is cast to.
        shard_size_bytes: target uncompressed bytes per shard.
        row_group_bytes: target uncompressed bytes per row group.
        on_shard: called for every finished shard.
    """

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        *,
        shard_size_bytes: int,
        row_group_bytes: int,
        on_shard: ShardCallback,
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.shard_size_bytes = shard_size_bytes
        # a row group never spans shards: with small shards, row groups shrink so shards keep their size
        self.row_group_bytes = min(row_group_bytes, shard_size_bytes)
        self.on_shard = on_shard
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_bytes = 0
        self._shard_rows = 0
        self._shard_bytes = 0
        self._row_groups = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Add rows; they must be castable to the writer's schema."""
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        for batch in _slices(batches, self.row_group_bytes):
            if batch.num_rows == 0:
                continue
            if batch.schema != self.schema:
                batch = _cast(batch, self.schema)
            self._buffer.append(batch)
            self._buffer_bytes += batch.nbytes
            if self._buffer_bytes >= self.row_group_bytes:
                self._flush_row_group()
            if self._shard_bytes >= self.shard_size_bytes:
                self._close_shard()

    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        if self._writer is None:
            self._path = self.directory / f"{uuid.uuid4().hex}.parquet"
            self._writer = pq.ParquetWriter(
                self._path,
                self.schema,
                compression=COMPRESSION,
                compression_level=COMPRESSION_LEVEL,
                # documents keep statistics on ids only (small footers); tables on every column (pruning)
                write_statistics=["id"] if "text" in self.schema.names else True,
            )
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._shard_rows += table.num_rows
        self._shard_bytes += self._buffer_bytes
        self._row_groups += 1
        self._buffer = []
        self._buffer_bytes = 0

    def _close_shard(self) -> None:
        self._flush_row_group()
        if self._writer is None:
            return
        self._writer.close()
        assert self._path is not None
        facts = {"rows": self._shard_rows, "raw_bytes": self._shard_bytes, "row_groups": self._row_groups}
        path = self._path
        self._writer, self._path = None, None
        self._shard_rows = self._shard_bytes = self._row_groups = 0
        self.on_shard(path, facts)

    def close(self) -> None:
        """Flush and finish the last shard."""
        self._close_shard()

    def abort(self) -> None:
        """Close an open file without publishing it."""
        if self._writer is not None:
            self._writer.close()
            if self._path is not None:
                self._path.unlink(missing_ok=True)
        self._writer, self._path, self._buffer = None, None, []


def _slices(batches: list[pa.RecordBatch], target_bytes: int) -> list[pa.RecordBatch]:
    """Cut batches larger than a row group so shards and row groups keep their target sizes."""
    out = []
    for batch in batches:
        if batch.nbytes <= target_bytes or batch.num_rows <= 1:
            out.append(batch)
            continue
        rows = max(1, int(batch.num_rows * target_bytes / batch.nbytes))
        out.extend(batch.slice(i, rows) for i in range(0, batch.num_rows, rows))
    return out


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if set(batch.schema.names) != set(schema.names):
        missing = sorted(set(schema.names) - set(batch.schema.names))
        extra = sorted(set(batch.schema.names) - set(schema.names))
        raise StoreError(
            f"rows do not match the dataset's columns (missing {missing}, unexpected {extra})",
            hint="write rows with the same columns as the rest of the version, or commit with mode='overwrite'",
        )
    batch = batch.select(schema.names)
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(
            f"rows do not match the dataset's column types: {exc}",
            hint=f"cast the rows to {schema}",
        ) from exc
