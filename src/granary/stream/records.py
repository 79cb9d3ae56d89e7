"""Records of a documents version as a sample source (sample ``i`` is row ``i`` of the shards in order)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from granary.errors import StreamError

if TYPE_CHECKING:
    import pyarrow as pa

    from granary.store import Manifest, Store


class RecordSource:
    """Records (rows) of a documents version; sample ``i`` is row ``i`` of the shards in manifest order.

    Decoded shards are kept in a small LRU (``cache_shards``), so prefer the ``block`` shuffle for versions
    much larger than that.
    """

    def __init__(self, store: Store, manifest: Manifest, *, columns: list[str] | None = None,
                 cache_shards: int = 8) -> None:
        if manifest.kind != "documents":
            raise StreamError(f"{manifest.dataset}@{manifest.version_id[:12]} is a {manifest.kind} version, "
                              "not documents", hint="pass seq_len to stream fixed-length token samples")
        self.version_id = manifest.version_id
        self._store = store
        self._entries = list(manifest.shards)
        self._columns = columns
        self._starts = np.concatenate([[0], np.cumsum([e.rows for e in self._entries])]).astype(np.int64)
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._cache_shards = cache_shards

    @property
    def num_samples(self) -> int:
        """Records per epoch."""
        return int(self._starts[-1])

    def _table(self, s: int) -> pa.Table:
        table = self._cache.get(s)
        if table is None:
            table = self._store.read_shard(self._entries[s], columns=self._columns, verify=True)
            self._cache[s] = table
            if len(self._cache) > self._cache_shards:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(s)
        return table

    def gather(self, samples: np.ndarray) -> list[dict[str, object]]:
        """The given records, in order, as dicts."""
        import pyarrow as pa

        shard = np.searchsorted(self._starts, samples, side="right") - 1
        pieces: list[pa.Table] = []
        where: list[np.ndarray] = []
        for s in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == s)
            rows = samples[sel] - self._starts[s]
            pieces.append(self._table(s).take(pa.array(rows)))
            where.append(sel)
        table = pa.concat_tables(pieces)
        order = np.argsort(np.concatenate(where), kind="stable")
        return table.take(pa.array(order)).to_pylist()
