"""Sample sources: fixed-length token samples of a tokens version, records of a documents version."""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import numpy as np
import xxhash
from numpy.lib.stride_tricks import as_strided

from granary.errors import StreamError
from granary.store.formats.tokens import TokenShardReader
from granary.stream.errors import CorruptBlockError
from granary.stream.pack import PackedLayout, segment_ids

if TYPE_CHECKING:
    import pyarrow as pa

    from granary.store import Manifest, ShardEntry, Store
    from granary.stream.cache import BlockCache

log = logging.getLogger(__name__)


class TokenShard(Protocol):
    """What the token source needs from one shard, local (memory-mapped) or remote (cached blocks)."""

    key: str
    num_tokens: int
    block_tokens: int
    doc_offsets: np.ndarray

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the shard, every block they touch verified."""
        ...


class LocalTokenShard:
    """A memory-mapped local token shard; blocks are verified once per process, the first time touched."""

    def __init__(self, path: str, key: str) -> None:
        reader = TokenShardReader(path, name=key)
        self.key = key
        self.num_tokens = reader.num_tokens
        self.block_tokens = reader.block_tokens
        self.doc_offsets = np.asarray(reader.doc_offsets, dtype=np.int64)
        self.tokens: np.ndarray = np.asarray(reader.tokens).view(np.ndarray)
        self._expected = np.asarray(reader.blocks["xxh3"], dtype=np.uint64)
        self.verified = np.zeros(reader.num_blocks, dtype=bool)

    def verify_block(self, block: int) -> None:
        """Check one block's xxh3-64 (no-op once verified); raise CorruptBlockError naming shard and block."""
        if self.verified[block]:
            return
        lo = block * self.block_tokens
        actual = xxhash.xxh3_64_intdigest(self.tokens[lo : lo + self.block_tokens])
        expected = int(self._expected[block])
        if actual != expected:
            raise CorruptBlockError(self.key, block, expected=f"{expected:016x}", actual=f"{actual:016x}")
        self.verified[block] = True

    def verify_range(self, start: int, stop: int) -> None:
        """Verify every block holding a token of ``[start, stop)``."""
        for b in range(start // self.block_tokens, (stop - 1) // self.block_tokens + 1):
            self.verify_block(b)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` (a view), verified."""
        self.verify_range(start, stop)
        return self.tokens[start:stop]

    def warm(self, *, verify: bool) -> None:
        """Map every page (MADV_POPULATE_READ, no GIL held) and verify every block; failures are left for the
        reading path to raise when it touches the block."""
        populate(self.tokens)
        if not verify:
            return
        for block in range(len(self.verified)):
            try:
                self.verify_block(block)
            except CorruptBlockError:
                log.warning("shard %s block %d failed its checksum in the background check", self.key, block)


_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels return EINVAL and pages fault in on first touch


def populate(array: np.ndarray) -> None:
    """Pre-fault the page tables of a memory-mapped array so the first reads do not take page faults."""
    if not sys.platform.startswith("linux") or array.nbytes == 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    start = array.ctypes.data // page * page
    libc.madvise(start, array.ctypes.data + array.nbytes - start, _MADV_POPULATE_READ)


class TokenSource:
    """Fixed-length packed samples of a tokens version (see :class:`PackedLayout`).

    Args:
        store: the store holding the version.
        manifest: the version's manifest.
        seq_len: tokens per sample.
        verify: check block checksums the first time each block is read.
        warm: map and verify all local blocks in a background thread (the reading path never waits for it).
        cache: block cache; shards without a local path always go through one (default under GRANARY_HOME),
            and passing one stages local shards through it too (e.g. from a slow network file system).
    """

    def __init__(self, store: Store, manifest: Manifest, *, seq_len: int, verify: bool = True,
                 warm: bool = True, cache: BlockCache | None = None) -> None:
        if manifest.kind != "tokens":
            raise StreamError(f"{manifest.dataset}@{manifest.version_id[:12]} is a {manifest.kind} version",
                              hint="tokenize it first: granary tokenize REF --tokenizer PATH --output NAME")
        self.version_id = manifest.version_id
        self.seq_len = seq_len
        self._cache = cache
        self.shards: list[TokenShard] = [self._open(store, e) for e in manifest.shards]
        dtypes = {str(e.meta.get("dtype", "uint16")) for e in manifest.shards}
        if len(dtypes) > 1:
            raise StreamError(f"version {manifest.version_id[:12]} mixes token dtypes {sorted(dtypes)}")
        self.dtype = np.dtype(dtypes.pop() if dtypes else "uint16")
        self.layout = PackedLayout.build([s.num_tokens for s in self.shards], seq_len)
        if self.layout.num_samples == 0:
            raise StreamError(f"version {manifest.version_id[:12]} has {self.layout.shard_starts[-1]} tokens, "
                              f"fewer than one sample of seq_len={seq_len}", hint="use a smaller --seq-len")
        self._verify = verify
        self._local = all(isinstance(s, LocalTokenShard) for s in self.shards)
        self._doc_starts: np.ndarray | None = None
        self._virtual: np.ndarray | None = None
        self._elem_base = np.zeros(len(self.shards), dtype=np.int64)
        nblocks = [-(-s.num_tokens // s.block_tokens) for s in self.shards]
        self._block_base = np.concatenate([[0], np.cumsum(nblocks)[:-1]]).astype(np.int64)
        self._block_tokens = np.array([s.block_tokens for s in self.shards], dtype=np.int64)
        self._verified = np.zeros(int(sum(nblocks)), dtype=bool)
        for s, base, count in zip(self.shards, self._block_base.tolist(), nblocks, strict=True):
            if isinstance(s, LocalTokenShard):
                s.verified = self._verified[base : base + count]  # one flag array for the whole version
        self._all_verified = not verify or not self._local or bool(self._verified.all())
        if self._local:
            self._build_local_index()
            if warm:
                threading.Thread(target=self._warm, daemon=True, name="granary-warm").start()

    def _warm(self) -> None:
        for shard in self.shards:
            if isinstance(shard, LocalTokenShard):
                shard.warm(verify=self._verify)

    def _open(self, store: Store, entry: ShardEntry) -> TokenShard:
        """A memory-mapped local shard, or a cached remote one (always cached when a cache was passed)."""
        path = store.local_path(entry)
        if path is not None and self._cache is None:
            return LocalTokenShard(path, entry.key)
        if self._cache is None:
            from granary.stream.cache import BlockCache

            self._cache = BlockCache.default(store)
        return self._cache.shard(entry)

    def prefetch(self, samples: np.ndarray) -> None:
        """Tell the block cache which blocks the coming samples need, in order (no-op for local shards)."""
        if self._local or self._cache is None:
            return
        wanted = []
        for sample in samples.tolist():
            for s, lo, hi in self.layout.pieces(sample):
                shard = self.shards[s]
                for b in shard.blocks_of(lo, hi):  # type: ignore[attr-defined]
                    wanted.append((shard.entry, b, shard.span(b)))  # type: ignore[attr-defined]
        self._cache.prefetch(wanted)

    def _build_local_index(self) -> None:
        """One strided view over all memory-mapped shards, so a batch is a single vectorised gather.

        Row ``e`` of ``self._virtual`` is the ``seq_len`` tokens starting at element ``e`` counted from the
        lowest shard mapping; shard ``s`` starts at element ``self._elem_base[s]``. Only rows of samples that
        lie wholly inside one shard are ever indexed (``PackedLayout.locate`` says which), so every read stays
        inside a live mapping; the shard arrays are kept referenced by ``self.shards``.
        """
        arrays = [s.tokens for s in self.shards if isinstance(s, LocalTokenShard)]
        itemsize = self.dtype.itemsize
        addrs = np.array([a.ctypes.data for a in arrays], dtype=np.int64)
        lowest = int(np.argmin(addrs))
        offsets = addrs - addrs[lowest]
        if (offsets % itemsize).any():  # mappings are page aligned, so this does not happen on Linux
            self._virtual = None
            return
        end = max(int(a.ctypes.data) + a.nbytes for a in arrays)
        rows = (end - int(addrs[lowest])) // itemsize - self.seq_len + 1
        self._virtual = as_strided(arrays[lowest], shape=(max(rows, 1), self.seq_len),
                                   strides=(itemsize, itemsize), writeable=False)
        self._elem_base = offsets // itemsize

    @property
    def num_samples(self) -> int:
        """Samples per epoch."""
        return self.layout.num_samples

    def gather(self, samples: np.ndarray) -> np.ndarray:
        """The given samples, in order, as a new ``(len(samples), seq_len)`` array."""
        shard, local, aligned = self.layout.locate(samples)
        if self._verify and self._local and not self._all_verified:
            self._verify_local(shard, local, aligned)
        if self._virtual is not None and aligned.all():
            return self._virtual[self._elem_base[shard] + local]
        out = np.empty((len(samples), self.seq_len), dtype=self.dtype)
        if self._virtual is not None:
            ok = np.flatnonzero(aligned)
            out[ok] = self._virtual[self._elem_base[shard[ok]] + local[ok]]
            rest = np.flatnonzero(~aligned).tolist()
        else:
            rest = list(range(len(samples)))
        for j in rest:
            self._copy_pieces(int(samples[j]), out[j])
        return out

    def _verify_local(self, shard: np.ndarray, local: np.ndarray, aligned: np.ndarray) -> None:
        block_tokens = self._block_tokens[shard]
        first = self._block_base[shard] + local // block_tokens
        last = self._block_base[shard] + (local + self.seq_len - 1) // block_tokens
        if self._verified[first].all() and self._verified[np.minimum(last, len(self._verified) - 1)].all() \
                and ((last - first) <= 1).all():
            return
        for s, lo, a in zip(shard.tolist(), local.tolist(), aligned.tolist(), strict=True):
            handle = self.shards[s]
            assert isinstance(handle, LocalTokenShard)
            if a:
                handle.verify_range(lo, lo + self.seq_len)
            # samples spanning shards are verified piece by piece in _copy_pieces
        self._all_verified = bool(self._verified.all())

    def _copy_pieces(self, sample: int, row: np.ndarray) -> None:
        pos = 0
        for s, lo, hi in self.layout.pieces(sample):
            row[pos : pos + hi - lo] = self.shards[s].read(lo, hi)
            pos += hi - lo

    def doc_starts(self) -> np.ndarray:
        """Global token offsets where documents begin (loaded once)."""
        if self._doc_starts is None:
            parts = [s.doc_offsets[:-1] + int(self.layout.shard_starts[i]) for i, s in enumerate(self.shards)]
            self._doc_starts = np.concatenate(parts) if parts else np.empty(0, np.int64)
        return self._doc_starts

    def segment_ids(self, samples: np.ndarray) -> np.ndarray:
        """Document index of every token inside each sample (for block-diagonal attention masks)."""
        return segment_ids(self.doc_starts(), samples.astype(np.int64) * self.seq_len, self.seq_len)


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
