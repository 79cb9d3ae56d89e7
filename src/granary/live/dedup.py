"""Streaming dedup: drop records whose key the dataset already holds (any earlier micro-batch) or that repeat a key
earlier in the same micro-batch (the first one is kept).

The index is the set of keys committed on the branch, loaded once through the store (authorised and audited
like any read) when the ingester starts, and grown by each commit; a restart after a crash rebuilds it from
the committed data, so dedup stays exact under the same kill -9 guarantees as the ingestion itself. It is
vectorised end to end (Arrow hash kernels, no Python per record): keys of several columns are joined into
one string with a separator no value can hold, and a batch is checked with one ``is_in`` against the index.
Memory is that of the distinct keys (about 8 bytes plus the key's length each).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.live.errors import LiveError

SEP = "\x1f"


class KeyIndex:
    """The keys a branch already holds, for dropping repeats from new micro-batches."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("dedup needs at least one key column")
        self.keys = keys
        self._known: list[pa.Array] = []
        self._merged: pa.Array | None = None
        self._pending: pa.Array | None = None
        self.size = 0

    def load(self, store: Any, ref: str | None) -> None:
        """Index the keys of ``ref`` (the branch head; None when the dataset is still empty)."""
        if ref is None:
            return
        table = store.read_table(ref, columns=list(self.keys))
        if table.num_rows:
            self._add(pc.unique(self._key(table)))

    def filter(self, table: pa.Table, *, where: str) -> tuple[pa.Table, int]:
        """The rows of ``table`` whose key is new (first occurrence within the table); returns them and how many
        were dropped. The kept keys join the index only by :meth:`commit` (after the commit succeeded)."""
        missing = [k for k in self.keys if k not in table.column_names]
        if missing:
            raise LiveError(f"{where}: dedup key column(s) {missing} are not in the messages "
                              f"(columns: {table.column_names})", hint="fix --dedup-keys or the producer")
        key = self._key(table)
        fresh = pc.invert(pc.is_in(key, value_set=self._index())) if self.size else pa.array(
            np.ones(len(key), dtype=bool))
        idx = pa.array(np.arange(len(key), dtype=np.int64))
        firsts = (pa.table({"k": key, "i": idx}).filter(fresh).group_by("k", use_threads=False)
                  .aggregate([("i", "min")]).column("i_min"))
        keep = np.zeros(len(key), dtype=bool)
        keep[firsts.to_numpy()] = True
        out = table.filter(pa.array(keep))
        self._pending = key.filter(pa.array(keep))
        return out, table.num_rows - out.num_rows

    def commit(self) -> None:
        """The filtered batch was committed: its keys are known from now on."""
        if self._pending is not None and len(self._pending):
            self._add(self._pending)
        self._pending = None

    def _add(self, keys: pa.Array) -> None:
        self._known.append(keys)
        self.size += len(keys)
        self._merged = None

    def _index(self) -> pa.Array:
        if self._merged is None:
            self._merged = pa.concat_arrays(self._known) if len(self._known) > 1 else self._known[0]
            self._known = [self._merged]
        return self._merged

    def _key(self, table: pa.Table) -> pa.Array:
        cols = [table.column(k).combine_chunks() for k in self.keys]
        if len(cols) == 1 and (pa.types.is_integer(cols[0].type) or pa.types.is_string(cols[0].type)):
            return cols[0].fill_null("") if pa.types.is_string(cols[0].type) else cols[0]
        parts = [pc.cast(c, pa.string()).fill_null("") for c in cols]
        return pc.binary_join_element_wise(*parts, SEP)
