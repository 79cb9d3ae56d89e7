"""Readers for Parquet, CSV and folders of text/markdown files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from granary.store.ingest.sink import BadRecordSink

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
BATCH_ROWS = 65536


def _check_text(table: pa.Table, sink: BadRecordSink, source: str, first_row: int) -> pa.Table | None:
    """Keep rows with a string text; report the others with their row numbers."""
    if "text" not in table.column_names:
        sink.bad(source, None, f"missing column: 'text' (columns: {table.column_names})")
        return None
    text = table.column("text")
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        for i in range(table.num_rows):
            sink.bad(source, first_row + i, f"wrong type: column 'text' is {text.type}, not string",
                     repr(table.slice(i, 1).to_pylist()[0]).encode())
        return None
    if text.null_count:
        nulls = pc.is_null(text)
        for i in pc.indices_nonzero(nulls).to_pylist():
            raw = repr(table.slice(i, 1).to_pylist()[0]).encode()
            sink.bad(source, first_row + i, "missing field: 'text' is null", raw)
        table = table.filter(pc.invert(nulls))
    return table


def read_parquet(path: Path, sink: BadRecordSink, on_bytes: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Stream a Parquet file in batches; row numbers are 1-based positions in the file.

    Row groups are read one at a time, so a corrupt one is reported (with its rows) and the others are kept.
    """
    source = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        sink.file_problem(source, None, f"unreadable Parquet file: {_first_line(exc)}; check that the file is "
                          "complete (a Parquet file ends with its footer) or write it again")
        return
    meta = pf.metadata
    per_row = path.stat().st_size / max(meta.num_rows, 1)
    row = 1
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        try:
            batches = list(pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]))
        except (pa.ArrowException, OSError) as exc:
            sink.file_problem(source, row, f"corrupt Parquet data: row group {group} (rows {row:,}-"
                              f"{row + rows - 1:,}) cannot be read: {_first_line(exc)}; write the file again")
            batches = []
        first = row
        for batch in batches:
            table = _check_text(pa.Table.from_batches([batch]), sink, source, first)
            first += batch.num_rows
            if table is not None and table.num_rows:
                yield table
        row += rows
        if on_bytes:
            on_bytes(int(rows * per_row))


def read_csv(path: Path, sink: BadRecordSink, on_bytes: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Stream a CSV file with a header row; malformed rows are reported with their line numbers."""
    source = str(path)
    ragged: list[pacsv.InvalidRow] = []

    def invalid(row: pacsv.InvalidRow) -> str:
        ragged.append(row)  # reported after the batch: an exception raised in here would escape as a traceback
        return "skip"

    def report_ragged() -> None:
        rows, ragged[:] = list(ragged), []
        for r in rows:
            where = r.number if r.number is not None and r.number >= 0 else None
            sink.bad(source, where, f"malformed CSV row: expected {r.expected_columns} columns, got "
                     f"{r.actual_columns}", (r.text or "").encode())

    try:
        # use_threads=False: only then does pyarrow tell the line number of a malformed row
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                                parse_options=pacsv.ParseOptions(invalid_row_handler=invalid,
                                                                        newlines_in_values=True),
                                convert_options=pacsv.ConvertOptions(column_types={"text": pa.string(),
                                                                                   "id": pa.string()}))
    except (pa.ArrowException, OSError) as exc:
        report_ragged()
        sink.file_problem(source, None, f"unreadable CSV file: {_first_line(exc)}")
        return
    row = 2
    size, done = path.stat().st_size, 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as exc:
            report_ragged()
            sink.file_problem(source, None, f"unreadable CSV data after row {row - 1:,}: {_first_line(exc)}")
            return
        report_ragged()
        table = _check_text(pa.Table.from_batches([batch]), sink, source, row)
        row += batch.num_rows
        if on_bytes:
            step = min(size - done, batch.nbytes)
            done += step
            on_bytes(step)
        if table is not None and table.num_rows:
            yield table
    report_ragged()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_hf_dataset(path: Path, sink: BadRecordSink,
                    on_bytes: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Stream a Hugging Face dataset saved with ``save_to_disk`` (memory-mapped Arrow; extra ``hf``)."""
    try:
        import datasets
    except ImportError as exc:
        from granary.errors import MissingDependencyError

        raise MissingDependencyError("datasets", "hf") from exc
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        sink.bad(str(path), None, f"a DatasetDict with splits {list(ds)}: ingest one split folder at a time")
        return
    table = ds.data.table
    row = 1
    per_row = sum(f.stat().st_size for f in path.glob("*.arrow")) / max(table.num_rows, 1)
    for batch in table.to_batches(max_chunksize=BATCH_ROWS):
        checked = _check_text(pa.Table.from_batches([batch]), sink, str(path), row)
        row += batch.num_rows
        if on_bytes:
            on_bytes(int(batch.num_rows * per_row))
        if checked is not None and checked.num_rows:
            yield checked


def read_text_files(root: Path, files: list[Path], sink: BadRecordSink,
                    on_bytes: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    """Each file is one document: ``text`` is its content, ``path`` its path relative to ``root``."""
    texts: list[str] = []
    paths: list[str] = []
    size = 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            sink.file_problem(str(f), None, f"unreadable file: {exc}; check its permissions or copy it again")
            continue
        if on_bytes:
            on_bytes(len(data))
        rel = str(f.relative_to(root)) if f.is_relative_to(root) else str(f)
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            sink.bad(str(f), None, f"invalid UTF-8 at byte {exc.start}", data)
            continue
        paths.append(rel)
        size += len(data)
        if size >= 32 * 1024 * 1024:
            yield pa.table({"text": texts, "path": paths})
            texts, paths, size = [], [], 0
    if texts:
        yield pa.table({"text": texts, "path": paths})
