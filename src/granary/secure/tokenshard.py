"""Random access to encrypted token shards for the streaming loader: only the touched blocks are decrypted.

:class:`EncryptedTokenShard` offers what the loader's token source needs from a shard (``key``,
``num_tokens``, ``block_tokens``, ``doc_offsets``, ``read(start, stop)``). Token block ``b`` is chunk
``b + 1`` of the encrypted object, so a read decrypts exactly the blocks it spans; decrypted blocks are
kept in a cache (bounded in bytes, first in first out) so shuffled samples from the same blocks cost one
decryption; the memory of evicted blocks and closed shards is reused for the next blocks.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, TYPE_CHECKING

import numpy as np

from granary.errors import IntegrityError
from granary.store.formats.tokens.layout import BLOCK_ENTRY, DTYPES, FOOTER_HEAD, HEADER, HEADER_SIZE, MAGIC, TRAILER

if TYPE_CHECKING:
    from granary.store import ShardEntry, Store

DEFAULT_CACHE_BYTES = 256 << 20
POOL_BYTES = 256 << 20


class _BufferPool:
    """Block buffers of evicted blocks and closed shards, reused for the next blocks decrypted: fresh memory
    costs a page fault per 4 KiB, which on a cold epoch weighs more than the decryption itself."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._free: dict[int, list[np.ndarray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._bytes -= nbytes
                return free.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        with self._lock:
            if self._bytes + buf.nbytes <= self.limit_bytes:
                self._free.setdefault(buf.nbytes, []).append(buf)
                self._bytes += buf.nbytes

    def clear(self) -> None:
        """Return the pooled memory to the allocator."""
        with self._lock:
            self._free.clear()
            self._bytes = 0


POOL = _BufferPool(POOL_BYTES)


def _recycle(tokens: np.ndarray) -> int:
    """Give a dropped block's buffer to the pool unless something still refers to it; returns its size.

    Callers pass the block without keeping a reference (``_recycle(cache.pop(key))``).
    """
    nbytes = tokens.nbytes
    buf = tokens.base
    del tokens
    # references now: `buf` here and getrefcount's argument; a live view or holder of the block adds one
    if isinstance(buf, np.ndarray) and sys.getrefcount(buf) == 2:
        POOL.give(buf)
    return nbytes


class EncryptedTokenShard:
    """A token shard read through a seekable decrypting file (``Store.open_object`` of an encrypted entry).

    Args:
        raw: the plaintext view of the shard (a :class:`granary.secure.crypto.DecryptingReader`).
        key: the object key, for error messages.
        cache_bytes: memory for decrypted blocks; a shuffled epoch costs one decryption per block when
            the blocks it visits fit, so size it to the shuffle window.
    """

    def __init__(self, raw: IO[bytes], key: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.key = key
        self._raw = raw
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}
        self._cache_bytes = max(0, cache_bytes)
        self._cached_bytes = 0
        magic, _version, code, block_tokens = HEADER.unpack(self._pread(0, HEADER.size))
        if magic != MAGIC or code not in DTYPES:
            raise IntegrityError(f"token shard {key} has a bad header after decryption", key=key)
        self.dtype = DTYPES[code]
        self.block_tokens = int(block_tokens)
        size = raw.seek(0, 2)
        footer_at, trailer_magic = TRAILER.unpack(self._pread(size - TRAILER.size, TRAILER.size))
        if trailer_magic != MAGIC or not HEADER_SIZE <= footer_at < size:
            raise IntegrityError(f"token shard {key} has a bad trailer after decryption", key=key)
        footer = self._pread(footer_at, size - TRAILER.size - footer_at)
        num_blocks, num_docs, num_tokens = FOOTER_HEAD.unpack_from(footer)
        table_end = FOOTER_HEAD.size + num_blocks * BLOCK_ENTRY.itemsize
        self.num_tokens = int(num_tokens)
        self.num_blocks = int(num_blocks)
        self.blocks = np.frombuffer(footer, dtype=BLOCK_ENTRY, count=num_blocks, offset=FOOTER_HEAD.size)
        self.doc_offsets = np.frombuffer(footer, dtype="<u8", count=num_docs + 1, offset=table_end).astype(np.int64)

    @classmethod
    def open(cls, store: Store, entry: ShardEntry, *, cache_bytes: int = DEFAULT_CACHE_BYTES
             ) -> EncryptedTokenShard:
        """Open an encrypted token shard of ``store`` (authorized and audited by the store's hooks)."""
        return cls(store.open_object(entry), entry.key, cache_bytes=cache_bytes)

    def _pread(self, offset: int, size: int) -> bytes:
        self._raw.seek(offset)
        data = self._raw.read(size)
        if len(data) != size:
            raise IntegrityError(f"token shard {self.key} ended early at byte {offset + len(data)}", key=self.key)
        return data

    def _block(self, b: int) -> np.ndarray:
        """Tokens of block ``b``, decrypted and authenticated once, then cached (call with the lock held)."""
        hit = self._cache.get(b)
        if hit is not None:
            return hit
        lo = b * self.block_tokens
        n = min(self.block_tokens, self.num_tokens - lo)
        buf = POOL.take(n * self.dtype.itemsize)
        self._raw.seek(HEADER_SIZE + lo * self.dtype.itemsize)
        got = self._raw.readinto(buf.data)  # type: ignore[attr-defined]
        if got != buf.nbytes:
            raise IntegrityError(f"token shard {self.key}: block {b} is short", key=self.key)
        tokens = buf.view(self.dtype)
        self._cache[b] = tokens
        self._cached_bytes += buf.nbytes
        while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
            self._cached_bytes -= _recycle(self._cache.pop(next(iter(self._cache))))  # first in, first out
        return tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` (a read-only view when they lie in one block); blocks are authenticated by
        AES-GCM as they are decrypted. Returned arrays stay valid: a block's memory is only reused once
        nothing refers to it any more."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside shard {self.key} of {self.num_tokens} tokens")
        bt = self.block_tokens
        first = start // bt
        base = first * bt
        if stop <= base + bt:
            hit = self._cache.get(first)  # lock-free hit path: dict reads are atomic
            if hit is None:
                with self._lock:
                    hit = self._block(first)
            return hit[start - base:stop - base]
        with self._lock:
            parts = [self._block(b) for b in range(first, (stop - 1) // bt + 1)]
        return np.concatenate(parts)[start - base:stop - base]

    def decrypt_block_into(self, block: int, out: memoryview) -> None:
        """Decrypt and authenticate token block ``block`` straight into ``out`` (its exact byte size); safe from
        several threads at once, and it bypasses the block cache (the caller keeps the plaintext)."""
        self._raw.decrypt_chunk_into(block + 1, out)  # type: ignore[attr-defined]  # chunk 0 is the header

    def materialize(self) -> np.ndarray:
        """Decrypt (and authenticate) every block into one in-memory array of all the shard's tokens.

        The plaintext lives only in this process's memory, never on disk. The streaming loader uses this when
        the encrypted shards of a version fit its memory budget, so a batch is one vectorised gather as for
        plain memory-mapped shards.
        """
        out = np.empty(self.num_tokens, dtype=self.dtype)
        view = memoryview(out.data).cast("B")
        with self._lock:
            self._raw.seek(HEADER_SIZE)
            done = 0
            while done < len(view):
                got = self._raw.readinto(view[done : done + (64 << 20)])  # type: ignore[attr-defined]
                if not got:
                    raise IntegrityError(f"token shard {self.key} ended early at token {done // out.itemsize}",
                                         key=self.key)
                done += got
        return out

    def close(self) -> None:
        """Close the underlying file; unreferenced cached blocks go to the pool for the next shard."""
        with self._lock:
            self._raw.close()
            cached, self._cache = list(self._cache.values()), {}
            self._cached_bytes = 0
        while cached:
            _recycle(cached.pop())
