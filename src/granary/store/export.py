"""Export a version to JSONL, Parquet, or a Hugging Face dataset saved on disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from granary.errors import MissingDependencyError, StoreError

if TYPE_CHECKING:
    from granary.store.model import VersionInfo
    from granary.store.store import Store

ExportFormat = Literal["jsonl", "parquet", "hf"]


def export(
    store: Store,
    ref: str,
    path: str | Path,
    *,
    fmt: ExportFormat = "jsonl",
    on_rows: Callable[[int], None] | None = None,
    purpose: str | None = None,
) -> int:
    """Write every row of a documents version to ``path``; returns the number of rows written.

    An export is authorised (``export`` for ``purpose``, default the store view's) and audited before a row
    is read, and once more when it is done.

    ``jsonl`` writes one JSON object per line (UTF-8), ``parquet`` one zstd Parquet file, ``hf`` a
    directory loadable with ``datasets.load_from_disk`` (extra ``hf``). Output is written to a
    temporary name and renamed, so a failed export never leaves a partial file under ``path``.
    """
    version = store.resolve(ref)
    if version.kind != "documents":
        raise StoreError(f"{ref} is a tokens dataset; export works on documents versions")
    store.gate.allow("export", version.dataset, version=version.id, purpose=purpose)  # authorised, audited
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    rows = 0
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in store.iter_batches(version, purpose=purpose):
                for row in batch.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=str))
                    f.write("\n")
                rows += batch.num_rows
                if on_rows:
                    on_rows(batch.num_rows)
    elif fmt == "parquet":
        schema = store.open_version(version, purpose=purpose).schema
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for batch in store.iter_batches(version, purpose=purpose):
                w.write_batch(batch)
                rows += batch.num_rows
                if on_rows:
                    on_rows(batch.num_rows)
    elif fmt == "hf":
        rows = _export_hf(store, version, tmp, purpose, on_rows)
    else:
        raise StoreError(f"unknown export format {fmt!r}", hint="use jsonl, parquet or hf")
    tmp.replace(path)
    store.hooks.record("export", version.dataset, version=version.id,
                       details={"format": fmt, "rows": rows, "done": True})
    return rows


def _export_hf(store: Store, version: VersionInfo, tmp: Path, purpose: str | None,
               on_rows: Callable[[int], None] | None) -> int:
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("datasets", "hf") from exc
    batches = []
    for batch in store.iter_batches(version, purpose=purpose):  # read batch by batch so the caller's progress moves
        batches.append(batch)
        if on_rows:
            on_rows(batch.num_rows)
    table = pa.Table.from_batches(batches, schema=store.manifest(version).schema)
    ds = datasets.Dataset(table)
    ds.save_to_disk(str(tmp))
    return table.num_rows
