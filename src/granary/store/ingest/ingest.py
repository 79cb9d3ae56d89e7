"""The ingest job: discover input files, read them with bounded memory, commit one version."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from granary.errors import StoreError
from granary.store.ingest.ids import fill_ids
from granary.store.ingest.jsonl import JsonlReader
from granary.store.ingest.sink import BadRecordSink, OnError
from granary.store.ingest.tabular import TEXT_SUFFIXES, read_csv, read_hf_dataset, read_parquet, read_text_files

if TYPE_CHECKING:
    from granary.store.model import VersionInfo
    from granary.store.store import Store

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson.gz",
                  ".ndjson.zst", ".jsonl.zstd")


@dataclass
class IngestReport:
    """The outcome of an ingest."""

    dataset: str
    version: VersionInfo | None = None
    files: int = 0
    records: int = 0
    quarantined: int = 0
    bytes_in: int = 0
    shards: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_fields: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "version"}
        out["version"] = None if self.version is None else self.version.id
        out["mb_per_s"] = round(self.bytes_in / 1e6 / self.seconds, 1) if self.seconds else None
        return out


def file_kind(path: Path) -> str | None:
    """``jsonl``, ``parquet``, ``csv``, ``text`` or None for a file we do not read."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def is_hf_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by Hugging Face ``Dataset.save_to_disk``."""
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def discover(paths: list[str | Path], skipped: list[Path] | None = None) -> list[tuple[Path, str, Path]]:
    """(file, kind, root) for every readable file under the given paths, in a stable order.

    Files in a folder whose format is not known are not read; they are appended to ``skipped`` (if given) and
    logged, so the ingest summary can say what was left out.
    """
    out: list[tuple[Path, str, Path]] = []
    left_out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise StoreError(f"input {p} does not exist", hint="check the path")
        if p.is_dir() and is_hf_dataset(p):
            out.append((p, "hf", p))
        elif p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                kind = file_kind(f)
                if kind is not None:
                    out.append((f, kind, p))
                elif not f.name.startswith("."):  # hidden files (.DS_Store, .gitignore) are not data
                    left_out.append(f)
        else:
            kind = file_kind(p)
            if kind is None:
                raise StoreError(f"cannot tell the format of {p}", hint=_FORMATS_HINT)
            out.append((p, kind, p.parent))
    if left_out:
        log.warning("skipping %d file(s) of unknown format: %s", len(left_out), ", ".join(map(str, left_out[:5])))
    if skipped is not None:
        skipped.extend(left_out)
    if not out:
        raise StoreError(f"no readable input files under {[str(p) for p in paths]}"
                         + (f" ({len(left_out)} file(s) of unknown format skipped)" if left_out else ""),
                         hint=_FORMATS_HINT)
    return out


_FORMATS_HINT = "use .jsonl/.jsonl.gz/.jsonl.zst, .parquet, .csv, .txt or .md"


def ingest(
    store: Store,
    paths: list[str | Path],
    dataset: str,
    *,
    on_error: OnError = "fail",
    branch: str | None = None,
    mode: str = "append",
    message: str | None = None,
    metadata: dict[str, Any] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> IngestReport:
    """Read every input file into one new version of ``dataset`` (created as documents if missing).

    Args:
        store: the store.
        paths: files and folders (folders are searched recursively).
        dataset: target dataset.
        on_error: ``fail`` stops at the first bad record with its file, line and reason;
            ``quarantine`` keeps bad records in the version's ``quarantine`` side table.
        branch: target branch (default: the dataset's default branch).
        mode: ``append`` to the branch head or ``overwrite`` it.
        message: commit message.
        metadata: source, license and tags recorded in the version.
        on_bytes: progress callback with raw input bytes consumed.
    """
    skipped: list[Path] = []
    files = discover(paths, skipped)
    store.create_dataset(dataset, kind="documents", exist_ok=True)
    sink = BadRecordSink(on_error)
    report = IngestReport(dataset=dataset, files=len(files), skipped=[str(p) for p in skipped])
    start = time.perf_counter()
    counted = _counter(report, on_bytes)
    with store.transaction(dataset, branch=branch, mode=mode) as txn:  # type: ignore[arg-type]
        fixed: list[pa.Schema] = [txn.schema] if txn.schema is not None else []
        ignored: set[str] = set()
        tables = _tables(files, sink, counted, ignored, txn.schema)
        for table in _prefetched(tables):
            table = fill_ids(table)
            if not fixed:
                fixed.append(table.schema)
            table = _align(table, fixed[0], ignored)
            txn.write(table)
            report.records += table.num_rows
        sink.flush()
        for qt in sink.tables:
            txn.write_side_table("quarantine", qt)
        report.quarantined = sink.count
        report.reasons = dict(sink.reasons)
        report.ignored_fields = sorted(ignored)
        report.damaged = list(sink.damaged)
        if report.records == 0 and report.quarantined == 0:
            raise StoreError(f"no records found in {len(files)} input file(s)",
                             hint="check that the files are not empty")
        report.version = txn.commit(
            message=message or f"ingest {len(files)} file(s)",
            lineage={"command": "ingest", "params": {"paths": [str(p) for p in paths], "on_error": on_error,
                                                     "mode": mode}},
            metadata=metadata or {},
            allow_empty=True,
        )
        report.shards = txn.stats.shards_written
    report.seconds = time.perf_counter() - start
    return report


_DONE = object()


def _prefetched(items: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Produce ``items`` in a background thread, ``depth`` ahead, so that parsing the next block (pyarrow's
    JSON reader releases the GIL) overlaps writing the current one; errors are re-raised here, in order."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=work, name="granary-ingest-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _counter(report: IngestReport, on_bytes: Callable[[int], None] | None) -> Callable[[int], None]:
    def count(n: int) -> None:
        report.bytes_in += n
        if on_bytes is not None:
            on_bytes(n)

    return count


def _tables(files: list[tuple[Path, str, Path]], sink: BadRecordSink, on_bytes: Callable[[int], None],
            ignored: set[str], schema: pa.Schema | None) -> Iterator[pa.Table]:
    """Tables from every input in order; JSONL files hold to the schema the first one fixed."""
    text_files: list[tuple[Path, Path]] = []
    for path, kind, root in files:
        if kind == "jsonl":
            reader = JsonlReader(path, sink, schema=schema, on_bytes=on_bytes)
            yield from reader
            schema = reader.schema or schema
            ignored |= reader.ignored_fields
        elif kind == "parquet":
            yield from read_parquet(path, sink, on_bytes)
        elif kind == "csv":
            yield from read_csv(path, sink, on_bytes)
        elif kind == "hf":
            yield from read_hf_dataset(path, sink, on_bytes)
        else:
            text_files.append((path, root))
    by_root: dict[Path, list[Path]] = {}
    for path, root in text_files:
        by_root.setdefault(root, []).append(path)
    for root, paths in by_root.items():
        yield from read_text_files(root, paths, sink, on_bytes)


def _align(table: pa.Table, schema: pa.Schema, ignored: set[str]) -> pa.Table:
    """Give ``table`` exactly ``schema``'s columns: missing ones as nulls, unknown ones dropped (and reported)."""
    if table.schema == schema:
        return table
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        ignored.update(extra)
        table = table.drop_columns(extra)
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=schema)
