"""A local block cache for remote (``s3://``) token shards: verified atomic fills, prefetch of the known future
order, a fixed size budget with eviction of the blocks needed furthest in the future, safe to share between
ranks on one node (no locks: fills are write-to-temp then rename; a block evicted under a reader is refetched).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from granary.errors import StreamError
from granary.store.formats.tokens.layout import BLOCK_ENTRY, DTYPES, FOOTER_HEAD, HEADER, HEADER_SIZE, MAGIC, TRAILER
from granary.stream.errors import CorruptBlockError
from granary.stream.verify import reset_after_fork

if TYPE_CHECKING:
    from granary.store import ShardEntry, Store

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 8 * 1024**3
_STALE_TMP_S = 600.0


class BlockCache:
    """Blocks of token shards cached under ``root/<shard checksum>/<block>.blk``.

    Args:
        store: the store the shards live in.
        root: cache directory (shared by every rank on the node).
        budget_bytes: the cache never holds more than this after a fill (one block of slack per filler).
        prefetch_threads: threads fetching blocks ahead of use.
        hot_blocks: blocks this process keeps mapped (the last ones used).
    """

    def __init__(self, store: Store, root: Path, *, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 prefetch_threads: int = 4, hot_blocks: int = 16) -> None:
        if budget_bytes < 1:
            raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
        self.store = store
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._pool = ThreadPoolExecutor(max_workers=prefetch_threads, thread_name_prefix="granary-prefetch")
        self._pending: dict[Path, Future[None]] = {}
        self._lock = threading.Lock()
        self._next_use: dict[str, int] = {}
        self._hot: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._hot_blocks = hot_blocks
        self.stats = {"hits": 0, "fills": 0, "evictions": 0, "fill_bytes": 0}
        self._prefetch_threads = prefetch_threads
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """A forked child has none of the parent's prefetch threads: new pool, no pending fills, fresh lock."""
        self._pool = ThreadPoolExecutor(max_workers=self._prefetch_threads, thread_name_prefix="granary-prefetch")
        self._pending = {}
        self._lock = threading.Lock()

    @classmethod
    def default(cls, store: Store) -> BlockCache:
        """The cache under ``GRANARY_HOME/cache/blocks`` (budget from ``GRANARY_STREAM_CACHE_BYTES``)."""
        budget = int(os.environ.get("GRANARY_STREAM_CACHE_BYTES", DEFAULT_BUDGET_BYTES))
        return cls(store, store.settings.home / "cache" / "blocks", budget_bytes=budget)

    def shard(self, entry: ShardEntry) -> RemoteTokenShard:
        """A token shard read through this cache (its footer is fetched once and cached too)."""
        return RemoteTokenShard(self, entry)

    # -- blocks --------------------------------------------------------------------------------
    def _path(self, entry: ShardEntry, block: int) -> Path:
        return self.root / entry.checksum / f"{block}.blk"

    def get(self, entry: ShardEntry, block: int, span: tuple[int, int, int]) -> np.ndarray:
        """The bytes of one block (uint8, memory-mapped), cached or fetched, verified against its xxh3-64."""
        path = self._path(entry, block)
        hot = self._hot.get(path)
        if hot is not None:
            self._hot.move_to_end(path)
            return hot
        pending = self._pending.get(path)
        if pending is not None:
            pending.result()
        for _ in range(3):
            try:
                # A mapping stays valid if another rank evicts (unlinks) the file while we read it.
                data = np.memmap(path, dtype=np.uint8, mode="r")
            except FileNotFoundError:  # not cached yet, or evicted by another rank: (re)fill
                self._fill(entry, block, span)
                continue
            self.stats["hits"] += 1
            self._hot[path] = data
            if len(self._hot) > self._hot_blocks:
                self._hot.popitem(last=False)
            return data
        raise StreamError(f"block {block} of shard {entry.key} keeps disappearing from the cache {self.root}",
                          hint="raise GRANARY_STREAM_CACHE_BYTES: the budget is smaller than the working set")

    def prefetch(self, wanted: Iterable[tuple[ShardEntry, int, tuple[int, int, int]]]) -> None:
        """Fetch these blocks in the background, in order; they are also the future order used for eviction."""
        with self._lock:
            self._next_use = {}
            for rank, (entry, block, span) in enumerate(wanted):
                path = self._path(entry, block)
                self._next_use.setdefault(str(path), rank)
                if path.exists() or path in self._pending:
                    continue
                fut = self._pool.submit(self._fill, entry, block, span)
                self._pending[path] = fut
                fut.add_done_callback(self._done_callback(path))

    def _done_callback(self, path: Path) -> Callable[[Future[None]], None]:
        def done(_: Future[None]) -> None:
            self._pending.pop(path, None)

        return done

    def _fill(self, entry: ShardEntry, block: int, span: tuple[int, int, int]) -> None:
        offset, length, expected = span
        with self.store.open_object(entry) as f:
            f.seek(offset)
            data = f.read(length)
        actual = xxhash.xxh3_64_intdigest(data)
        if len(data) != length or actual != expected:
            raise CorruptBlockError(entry.key, block, expected=f"{expected:016x}", actual=f"{actual:016x}")
        path = self._path(entry, block)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: readers see the whole verified block or nothing
        self.stats["fills"] += 1
        self.stats["fill_bytes"] += length
        self._evict(keep=path)

    def _evict(self, *, keep: Path) -> None:
        """Drop blocks until under budget: first those not in the known future, then the furthest needed."""
        files, total, now = [], 0, time.time()
        for shard_dir in self.root.iterdir():
            if not shard_dir.is_dir():
                continue
            for f in shard_dir.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                if f.name.endswith(".tmp"):
                    if now - st.st_mtime > _STALE_TMP_S:  # left by a killed filler
                        f.unlink(missing_ok=True)
                    continue
                if f.suffix == ".blk":
                    files.append((f, st.st_size, st.st_atime))
                    total += st.st_size
        if total <= self.budget_bytes:
            return
        horizon = len(self._next_use) + 1
        files.sort(key=lambda x: (-self._next_use.get(str(x[0]), horizon), x[2]))
        for f, size, _ in files:
            if total <= self.budget_bytes:
                break
            if f == keep:
                continue
            f.unlink(missing_ok=True)
            total -= size
            self.stats["evictions"] += 1

    def cached_bytes(self) -> int:
        """Bytes of blocks in the cache now."""
        return sum(f.stat().st_size for d in self.root.iterdir() if d.is_dir() for f in d.glob("*.blk"))


class RemoteTokenShard:
    """A token shard on remote storage: footer parsed once, blocks read through the cache."""

    def __init__(self, cache: BlockCache, entry: ShardEntry) -> None:
        self.cache = cache
        self.entry = entry
        self.key = entry.key
        footer = self._footer()
        self.dtype, self.block_tokens, self.blocks, self.doc_offsets, self.num_tokens = footer

    def _footer(self) -> tuple[np.dtype, int, np.ndarray, np.ndarray, int]:
        meta = self.cache.root / self.entry.checksum / "footer"
        if meta.exists():
            raw = meta.read_bytes()
        else:
            with self.cache.store.open_object(self.entry) as f:
                head = f.read(HEADER_SIZE)
                size = f.seek(0, 2)
                f.seek(size - TRAILER.size)
                footer_offset, magic = TRAILER.unpack(f.read(TRAILER.size))
                if magic != MAGIC:
                    raise StreamError(f"token shard {self.key} has a bad trailer (truncated or not a token shard)",
                                      hint="run `granary verify REF` and restore the shard from a replica")
                f.seek(footer_offset)
                raw = head + f.read(size - footer_offset)
            meta.parent.mkdir(parents=True, exist_ok=True)
            tmp = meta.with_name(f".footer.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, meta)
        _, _, code, block_tokens = HEADER.unpack(raw[: HEADER.size])
        body = raw[HEADER_SIZE:]
        nblocks, ndocs, ntokens = FOOTER_HEAD.unpack(body[: FOOTER_HEAD.size])
        blocks_end = FOOTER_HEAD.size + nblocks * BLOCK_ENTRY.itemsize
        blocks = np.frombuffer(body[FOOTER_HEAD.size : blocks_end], dtype=BLOCK_ENTRY)
        docs = np.frombuffer(body[blocks_end : blocks_end + (ndocs + 1) * 8], dtype="<u8").astype(np.int64)
        return DTYPES[code], int(block_tokens), blocks, docs, int(ntokens)

    def span(self, block: int) -> tuple[int, int, int]:
        """(byte offset, byte length, xxh3-64) of one block."""
        row = self.blocks[block]
        return int(row["offset"]), int(row["length"]), int(row["xxh3"])

    def blocks_of(self, start: int, stop: int) -> range:
        """Blocks holding tokens ``[start, stop)``."""
        return range(start // self.block_tokens, (stop - 1) // self.block_tokens + 1)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)``, from verified cached blocks."""
        parts = []
        for b in self.blocks_of(start, stop):
            data = self.cache.get(self.entry, b, self.span(b)).view(self.dtype)
            lo = max(start - b * self.block_tokens, 0)
            hi = min(stop - b * self.block_tokens, len(data))
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

