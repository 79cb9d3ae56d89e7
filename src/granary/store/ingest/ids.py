"""Stable content-hash ids for records that arrive without one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash


def content_ids(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """xxh3-128 hex of each text's UTF-8 bytes, hashed straight from the Arrow buffers (no str objects)."""
    arr = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    offsets_type: type[np.signedinteger[Any]]
    if arr.type == pa.large_string():
        offsets_type = np.int64
    else:
        arr = arr.cast(pa.string())
        offsets_type = np.int32
    n = len(arr)
    if n == 0:
        return pa.array([], type=pa.string())
    offsets = np.frombuffer(arr.buffers()[1], dtype=offsets_type)[arr.offset : arr.offset + n + 1].tolist()
    data = arr.buffers()[2]
    mv = memoryview(data) if data is not None else memoryview(b"")
    digest = xxhash.xxh3_128_hexdigest
    return pa.array([digest(mv[offsets[i] : offsets[i + 1]]) for i in range(n)], type=pa.string())


def fill_ids(table: pa.Table) -> pa.Table:
    """Ensure an ``id`` string column first and ``text`` second; missing or null ids become content hashes."""
    text = table.column("text")
    if "id" not in table.column_names:
        ids = content_ids(text)
    else:
        ids = table.column("id")
        if ids.type != pa.string():
            ids = ids.cast(pa.string())
        if ids.null_count:
            ids = pc.coalesce(ids, content_ids(text))
        table = table.drop_columns(["id"])
    rest = [c for c in table.column_names if c != "text"]
    return pa.table([ids, table.column("text"), *[table.column(c) for c in rest]], names=["id", "text", *rest])
