"""Ingesting CSV or Parquet files as a ``table`` dataset: any columns, types from the file, bad CSV rows quarantined."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from granary.store.ingest.sink import BadRecordSink

if TYPE_CHECKING:
    from granary.store.model import VersionInfo
    from granary.store.store import Store


def _batches(path: Path, sink: BadRecordSink) -> Iterator[pa.RecordBatch]:
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=65536)
        return
    source = str(path)

    def invalid(row: pacsv.InvalidRow) -> str:
        sink.bad(source, row.number, f"malformed CSV row: expected {row.expected_columns} columns, got "
                 f"{row.actual_columns}", (row.text or "").encode())
        return "skip"

    yield from pacsv.open_csv(path, parse_options=pacsv.ParseOptions(invalid_row_handler=invalid,
                                                                     newlines_in_values=True))


def ingest_table(store: Store, paths: list[Path], dataset: str, *, branch: str | None = None,
                 mode: str = "append", message: str | None = None) -> tuple[VersionInfo, int]:
    """Commit CSV/Parquet files to table ``dataset`` (created if missing) in one version; returns it and the
    number of quarantined rows (malformed CSV lines, in the version's ``quarantine`` table)."""
    store.create_dataset(dataset, kind="table", exist_ok=True)
    sink = BadRecordSink("quarantine")
    with store.transaction(dataset, branch=branch, mode=mode) as txn:  # type: ignore[arg-type]
        for path in paths:
            txn.write(_batches(path, sink))
        sink.flush()
        for t in sink.tables:
            txn.write_side_table("quarantine", t)
        version = txn.commit(message=message or f"ingest {', '.join(p.name for p in paths)}",
                             lineage={"ingest-table": [str(p) for p in paths]})
    return version, sink.count
