"""Random access to encrypted token shards for the streaming loader: only the touched blocks are decrypted.

:class:`EncryptedTokenShard` offers what the loader's token source needs from a shard (``key``,
``num_tokens``, ``block_tokens``, ``doc_offsets``, ``read(start, stop)``). Token block ``b`` is chunk
``b + 1`` of the encrypted object, so a read decrypts exactly the blocks it spans; decrypted blocks are
kept in a cache (bounded in bytes, first in first out) so shuffled samples from the same blocks cost one decryption.
"""

from __future__ import annotations

import threading
from typing import IO, TYPE_CHECKING

import numpy as np

from granary.errors import IntegrityError
from granary.store.formats.tokens.layout import BLOCK_ENTRY, DTYPES, FOOTER_HEAD, HEADER, HEADER_SIZE, MAGIC, TRAILER

if TYPE_CHECKING:
    from granary.store import ShardEntry, Store

DEFAULT_CACHE_BYTES = 256 << 20


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

    def block(self, b: int) -> np.ndarray:
        """Tokens of block ``b`` (decrypted and authenticated once, then cached)."""
        hit = self._cache.get(b)  # lock-free hit path: dict reads are atomic; eviction is first-in first-out
        if hit is not None:
            return hit
        with self._lock:
            hit = self._cache.get(b)
            if hit is not None:
                return hit
            lo = b * self.block_tokens
            tokens = np.empty(min(self.block_tokens, self.num_tokens - lo), dtype=self.dtype)
            self._raw.seek(HEADER_SIZE + lo * self.dtype.itemsize)
            got = self._raw.readinto(tokens.view(np.uint8).data)  # type: ignore[attr-defined]
            if got != tokens.nbytes:
                raise IntegrityError(f"token shard {self.key}: block {b} is short", key=self.key)
            self._cache[b] = tokens
            self._cached_bytes += tokens.nbytes
            while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
                self._cached_bytes -= self._cache.pop(next(iter(self._cache))).nbytes
            return tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)``; blocks are authenticated by AES-GCM as they are decrypted."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside shard {self.key} of {self.num_tokens} tokens")
        bt = self.block_tokens
        first = start // bt
        base = first * bt
        if stop <= base + bt:
            return self.block(first)[start - base:stop - base]
        parts = [self.block(b) for b in range(first, (stop - 1) // bt + 1)]
        return np.concatenate(parts)[start - base:stop - base]

    def close(self) -> None:
        """Close the underlying file and drop the cached blocks (arrays already returned stay valid)."""
        self._raw.close()
        self._cache = {}
        self._cached_bytes = 0
