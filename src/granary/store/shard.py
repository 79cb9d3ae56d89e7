"""Publishing finished shard files into content-addressed storage, and reading them back verified."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from granary.errors import IntegrityError, NotFoundError
from granary.store.formats.checksum import file_xxh3_128, stream_xxh3_128
from granary.store.hooks import StoreHooks
from granary.store.manifest import ShardEntry
from granary.store.objects import ObjectStore

EXTENSIONS = {"parquet": "parquet", "tokens": "tok", "blob": "bin"}


def data_key(dataset: str, checksum: str, fmt: str) -> str:
    """Object key of a shard: content addressed under its dataset."""
    return f"datasets/{dataset}/data/{checksum[:2]}/{checksum}.{EXTENSIONS[fmt]}"


def publish(
    objects: ObjectStore,
    hooks: StoreHooks,
    dataset: str,
    path: Path,
    *,
    fmt: str,
    rows: int,
    tokens: int | None = None,
    meta: dict[str, Any] | None = None,
) -> ShardEntry:
    """Checksum a finished local shard file (encrypting it first if the dataset asks) and publish it."""
    meta = dict(meta or {})
    if hooks.encrypts(dataset):
        enc_path = path.with_suffix(path.suffix + ".enc")
        meta["enc"] = hooks.encrypt_file(dataset, path, enc_path, fmt=fmt)
        path.unlink(missing_ok=True)
        path = enc_path
    checksum, size = file_xxh3_128(str(path))
    key = data_key(dataset, checksum, fmt)
    objects.publish_file(path, key)
    return ShardEntry(key=key, rows=rows, bytes=size, checksum=checksum, format=fmt, tokens=tokens, meta=meta)


def check_object(objects: ObjectStore, entry: ShardEntry, *, shard: int | None = None) -> None:
    """Raise IntegrityError unless the stored object exists with the recorded size and checksum."""
    size = objects.size(entry.key)
    if size is None:
        raise IntegrityError(f"shard {entry.key} is missing", key=entry.key, shard=shard, expected=entry.checksum)
    if size != entry.bytes:
        raise IntegrityError(
            f"shard {entry.key} has {size} bytes, expected {entry.bytes} (truncated or overwritten)",
            key=entry.key, shard=shard, expected=entry.checksum,
        )
    local = objects.local_path(entry.key)
    if local is not None:
        actual, _ = file_xxh3_128(local)
    else:
        with objects.open(entry.key) as f:
            actual, _ = stream_xxh3_128(f)
    if actual != entry.checksum:
        raise IntegrityError(
            f"shard {entry.key} failed its checksum (expected {entry.checksum[:16]}..., got {actual[:16]}...)",
            key=entry.key, shard=shard, expected=entry.checksum, actual=actual,
        )


def open_plain(objects: ObjectStore, hooks: StoreHooks, entry: ShardEntry) -> IO[bytes]:
    """Open a shard's plaintext bytes (decrypting transparently)."""
    try:
        raw = objects.open(entry.key)
    except NotFoundError:
        raise IntegrityError(f"shard {entry.key} is missing", key=entry.key, expected=entry.checksum) from None
    if "enc" in entry.meta:
        return hooks.open_decrypted(dict(entry.meta["enc"]), raw, key=entry.key)
    return raw


def _parquet_source(objects: ObjectStore, hooks: StoreHooks, entry: ShardEntry) -> Any:
    local = objects.local_path(entry.key)
    if local is not None and "enc" not in entry.meta:
        return local
    with open_plain(objects, hooks, entry) as f:
        return pa.py_buffer(f.read())


def read_shard(
    objects: ObjectStore,
    hooks: StoreHooks,
    entry: ShardEntry,
    *,
    columns: list[str] | None = None,
    verify: bool = True,
) -> pa.Table:
    """Read a whole document shard, checking its checksum first."""
    if verify:
        check_object(objects, entry)
    source = _parquet_source(objects, hooks, entry)  # outside the try: a refused data key is not "unreadable Parquet"
    try:
        pf = pq.ParquetFile(source if isinstance(source, str) else pa.BufferReader(source))
        return pf.read(columns=columns)  # not pq.read_table: it imports pyarrow.dataset (and pandas), ~0.4 s
    except (pa.ArrowInvalid, OSError) as exc:
        raise IntegrityError(f"shard {entry.key} is not readable Parquet: {exc}", key=entry.key) from exc


def iter_shard_batches(
    objects: ObjectStore,
    hooks: StoreHooks,
    entry: ShardEntry,
    *,
    columns: list[str] | None = None,
    batch_rows: int = 8192,
    verify: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Stream a document shard in record batches, bounded by its row-group size."""
    if verify:
        check_object(objects, entry)
    source = _parquet_source(objects, hooks, entry)
    try:
        pf = pq.ParquetFile(source if isinstance(source, str) else io.BytesIO(source.to_pybytes()))
        yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IntegrityError(f"shard {entry.key} is not readable Parquet: {exc}", key=entry.key) from exc
