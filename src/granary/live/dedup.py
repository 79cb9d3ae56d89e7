"""Streaming dedup: drop records whose key the dataset already holds (any earlier micro-batch) or that repeat a key
earlier in the same micro-batch (the first one is kept).

The index is the set of keys committed on the branch, loaded once through the store (authorised and audited
like any read) when the ingester starts, and grown by each commit; a restart after a crash rebuilds it from
the committed data, so dedup stays exact under the same kill -9 guarantees as the ingestion itself.

It is a persistent hashed index, updated incrementally: every key becomes a 64-bit code (an integer key is
its own code; other keys, joined into one string with a separator no value can hold, get a vectorised
polynomial hash), kept in sorted runs of doubling size (a log-structured merge: a committed batch adds a
run, and runs of similar size merge), so a batch costs O(batch x log(keys)) lookups and amortised
O(batch x log(keys)) upkeep, never a rebuild of the whole set. Hashed keys keep their key text next to
their code and every code match is confirmed on the text, so a hash collision can never drop a record.
No Python runs per record (except to settle a true 64-bit collision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.live.errors import LiveError

SEP = "\x1f"
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so the polynomial is invertible mod 2**64
_MAX_POW = 1 << 12


@dataclass
class _Run:
    """Sorted codes, and for hashed keys the key of each code (same order)."""

    codes: np.ndarray
    keys: pa.Array | None

    def __len__(self) -> int:
        return len(self.codes)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (spreads the polynomial's bits)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_strings(arr: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string of a null-free string/binary array, vectorised over its bytes."""
    arr = arr.cast(pa.large_binary()) if not pa.types.is_large_binary(arr.type) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    lengths = (end - start).astype(np.uint64)
    out = lengths * np.uint64(0x9E3779B97F4A7C15)
    if len(arr) and int(end[-1] - start[0]):
        counts = end - start
        pos = np.arange(start[0], end[-1]) - np.repeat(start, counts)
        nonempty = counts > 0
        seg = np.concatenate(([0], np.cumsum(counts)[:-1]))[nonempty]
        with np.errstate(over="ignore"):
            contrib = (data[start[0]:end[-1]].astype(np.uint64) + np.uint64(1)) * _powers(int(pos.max()) + 1)[pos]
            out[nonempty] += np.add.reduceat(contrib, seg)
    return _mix(out)


_POWERS: list[np.ndarray] = []


def _powers(n: int) -> np.ndarray:
    if not _POWERS or len(_POWERS[0]) < n:
        size = max(n, _MAX_POW)
        p = np.empty(size, dtype=np.uint64)
        p[0] = 1
        with np.errstate(over="ignore"):
            for i in range(1, size):  # once per process, a few thousand steps
                p[i] = p[i - 1] * _P
        _POWERS[:] = [p]
    return _POWERS[0]


class KeyIndex:
    """The keys a branch already holds, for dropping repeats from new micro-batches."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("dedup needs at least one key column")
        self.keys = keys
        self._runs: list[_Run] = []
        self._null_known = False
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
        fresh = ~self._contains(key)
        idx = pa.array(np.arange(len(key), dtype=np.int64))
        firsts = (pa.table({"k": key, "i": idx}).filter(pa.array(fresh)).group_by("k", use_threads=False)
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

    def _codes(self, key: pa.Array) -> np.ndarray:
        if pa.types.is_integer(key.type):
            return key.cast(pa.int64(), safe=False).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
        return hash_strings(key)

    def _contains(self, key: pa.Array) -> np.ndarray:
        """Whether each key (distinct or not) is in the index."""
        found = np.zeros(len(key), dtype=bool)
        hashed = not pa.types.is_integer(key.type)
        nulls = key.is_null().to_numpy(zero_copy_only=False) if key.null_count else None
        codes = self._codes(key)
        for run in self._runs:
            pos = np.searchsorted(run.codes, codes)
            pos_c = np.minimum(pos, len(run) - 1)
            hit = run.codes[pos_c] == codes
            if hashed and hit.any():
                rows = np.flatnonzero(hit)
                same = pc.equal(key.take(pa.array(rows)), run.keys.take(pa.array(pos_c[rows])))  # type: ignore[union-attr]
                same_np = same.to_numpy(zero_copy_only=False)
                for r in rows[~same_np]:  # a true 64-bit collision: look at every key with that code
                    lo, hi = pos_c[r], np.searchsorted(run.codes, codes[r], side="right")
                    same_np[np.searchsorted(rows, r)] = key[int(r)].as_py() in run.keys[lo:hi].to_pylist()  # type: ignore[index]
                hit[rows] = same_np
            found |= hit
        if nulls is not None:
            found[nulls] = self._null_known
        return found

    def _add(self, keys: pa.Array) -> None:
        """Add distinct keys not in the index yet."""
        if keys.null_count:
            self.size += 0 if self._null_known else 1
            self._null_known = True
            keys = keys.drop_null()
        self.size += len(keys)
        if not len(keys):
            return
        codes = self._codes(keys)
        order = np.argsort(codes, kind="stable")
        run = _Run(codes[order], None if pa.types.is_integer(keys.type) else keys.take(pa.array(order)))
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            run = _merge(self._runs.pop(), run)
        self._runs.append(run)

    def _key(self, table: pa.Table) -> pa.Array:
        cols = [table.column(k).combine_chunks() for k in self.keys]
        if len(cols) == 1 and (pa.types.is_integer(cols[0].type) or pa.types.is_string(cols[0].type)):
            return cols[0].fill_null("") if pa.types.is_string(cols[0].type) else cols[0]
        parts = [pc.cast(c, pa.string()).fill_null("") for c in cols]
        return pc.binary_join_element_wise(*parts, SEP)


def _merge(a: _Run, b: _Run) -> _Run:
    codes = np.concatenate([a.codes, b.codes])
    order = np.argsort(codes, kind="stable")
    keys = None if a.keys is None or b.keys is None else pa.concat_arrays([a.keys, b.keys]).take(pa.array(order))
    return _Run(codes[order], keys)
