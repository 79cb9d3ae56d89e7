"""Readers split an input into units of work (shards, files, groups of text files) and read each unit in
batches; malformed records go to the quarantine sink with their file, line and reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from granary.curate.errors import PipelineSpecError

if TYPE_CHECKING:
    from granary.store import Store
    from granary.store.ingest.sink import BadRecordSink

MAX_DOC_BYTES = 10 * 1024 * 1024
READERS = ("version", "jsonl", "parquet", "text", "files")


@dataclass(kw_only=True, frozen=True)
class ReaderConfig:
    """Where documents come from.

    Attributes:
        type: `version` (a dataset ref), `jsonl`, `parquet`, `text` (directories of .txt/.md) or `files`
            (any mix, format from the file name).
        ref: the dataset ref for `version`.
        paths: files or directories for the file readers.
        max_doc_bytes: larger documents are quarantined (default 10 MiB).
        text_files_per_unit: text files read by one task.
    """

    type: Literal["version", "jsonl", "parquet", "text", "files"] = "version"
    ref: str | None = None
    paths: tuple[str, ...] = ()
    max_doc_bytes: int = MAX_DOC_BYTES
    text_files_per_unit: int = 512

    def __post_init__(self) -> None:
        if self.type not in READERS:
            raise PipelineSpecError("reader.type", f"unknown reader {self.type!r}", hint=f"known: {READERS}")
        if self.type == "version" and not self.ref:
            raise PipelineSpecError("reader.ref", "a version reader needs `ref` (e.g. web@main)")
        if self.type != "version" and not self.paths:
            raise PipelineSpecError("reader.paths", f"a {self.type} reader needs `paths`")
        if self.max_doc_bytes < 1:
            raise PipelineSpecError("reader.max_doc_bytes", "must be >= 1")


@dataclass(frozen=True)
class Unit:
    """One task's worth of input: a store shard, one file, or a group of text files."""

    index: int
    kind: Literal["shard", "jsonl", "parquet", "text"]
    payload: Any
    root: str = ""
    label: str = ""


def reader_for(ref_or_path: str) -> ReaderConfig:
    """A reader for a CLI argument: an existing path reads files, anything else is a dataset ref."""
    if Path(ref_or_path).exists():
        return ReaderConfig(type="files", paths=(ref_or_path,))
    return ReaderConfig(type="version", ref=ref_or_path)


def plan_units(config: ReaderConfig, store: Store | None) -> tuple[list[Unit], dict[str, Any]]:
    """Split the input into units, in a deterministic order; also returns facts about the input."""
    if config.type == "version":
        if store is None:
            raise PipelineSpecError("reader", "reading a dataset version needs a store")
        version = store.resolve(config.ref or "")
        manifest = store.open_version(version)  # a data read: authorised for the purpose, audited
        shard_units = [Unit(i, "shard", e, label=e.key) for i, e in enumerate(manifest.shards)]
        return shard_units, {"input": version.ref if hasattr(version, "ref") else f"{version.dataset}@{version.id}",
                       "input_version": version.id, "input_dataset": version.dataset}
    from granary.store.ingest.ingest import discover

    files = discover(list(config.paths))
    units: list[Unit] = []
    text_group: list[str] = []
    text_root = ""
    for path, kind, root in files:
        if config.type not in ("files", kind if kind != "csv" else "files"):
            continue
        if kind == "text":
            if text_group and (str(root) != text_root or len(text_group) >= config.text_files_per_unit):
                units.append(Unit(len(units), "text", tuple(text_group), root=text_root, label=text_root))
                text_group = []
            text_root = str(root)
            text_group.append(str(path))
        elif kind == "jsonl":
            units.append(Unit(len(units), "jsonl", str(path), root=str(root), label=str(path)))
        elif kind == "parquet":
            units.append(Unit(len(units), "parquet", str(path), root=str(root), label=str(path)))
    if text_group:
        units.append(Unit(len(units), "text", tuple(text_group), root=text_root, label=text_root))
    return units, {"input": list(config.paths)}


def read_unit(unit: Unit, *, store: Store | None, sink: BadRecordSink, batch_rows: int,
              max_doc_bytes: int = MAX_DOC_BYTES) -> Iterator[pa.Table]:
    """The unit's documents as tables with `id` and `text` first, bad records reported to `sink`."""
    for table in _raw_tables(unit, store, sink):
        label = unit.label or str(unit.payload)
        table = check_batch(table, sink, label, max_doc_bytes)
        if table is None or table.num_rows == 0:
            continue
        for start in range(0, table.num_rows, batch_rows):
            yield table.slice(start, batch_rows)


def _raw_tables(unit: Unit, store: Store | None, sink: BadRecordSink) -> Iterator[pa.Table]:
    from granary.store.ingest import jsonl, tabular

    if unit.kind == "shard":
        assert store is not None
        yield store.read_shard(unit.payload)
        return
    path = Path(unit.payload) if unit.kind != "text" else None
    if path is not None and path.stat().st_size == 0:
        sink.bad(str(path), None, "empty file: no records")
        return
    if unit.kind == "jsonl":
        assert path is not None
        got = False
        for t in jsonl.JsonlReader(path, sink):
            got = True
            yield _with_source(t, path.name)
        if not got and sink.count == 0:
            sink.bad(str(path), None, "empty file: no records")
    elif unit.kind == "parquet":
        assert path is not None
        for t in tabular.read_parquet(path, sink):
            yield _with_source(t, path.name)
    else:
        root = Path(unit.root)
        for t in tabular.read_text_files(root, [Path(p) for p in unit.payload], sink):
            yield pa.table({"id": t.column("path"), "text": t.column("text"),
                            "source": pa.array([root.name] * t.num_rows, pa.string())})


def _with_source(table: pa.Table, name: str) -> pa.Table:
    if "source" in table.column_names:
        return table
    return table.append_column("source", pa.array([name] * table.num_rows, pa.string()))


def check_batch(table: pa.Table, sink: BadRecordSink, label: str, max_doc_bytes: int) -> pa.Table | None:
    """Quarantine rows without a string text or with a text over `max_doc_bytes`; fill missing ids."""
    from granary.store.ingest.ids import fill_ids

    if "text" not in table.column_names:
        sink.bad(label, None, f"missing column 'text' (columns: {table.column_names})")
        return None
    text = table.column("text")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        sink.bad(label, None, f"column 'text' is {text.type}, not string ({table.num_rows} rows)")
        return None
    bad = pc.fill_null(pc.greater(pc.binary_length(text), max_doc_bytes), False)
    nulls = pc.is_null(text)
    if pc.any(pc.or_(bad, nulls)).as_py():
        ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
        for i in pc.indices_nonzero(pc.or_(bad, nulls)).to_pylist():
            size = text[i].as_py()
            reason = "missing text (null)" if size is None else (
                f"huge document: {len(size.encode())} bytes > max_doc_bytes {max_doc_bytes}")
            sink.bad(label, i + 1, f"{reason} (id {ids[i]})", None if size is None else size[:1024].encode())
        table = table.filter(pc.invert(pc.or_(bad, nulls)))
    return fill_ids(table)
