"""Memory-mapped reader of token shards with per-block checksum verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from granary.errors import IntegrityError
from granary.store.formats.tokens.layout import (
    BLOCK_ENTRY,
    DTYPES,
    FOOTER_HEAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    TRAILER,
    VERSION,
)


class TokenShardReader:
    """Read a token shard from a local path (memory-mapped) or an in-memory buffer.

    Attributes:
        dtype: token dtype (``uint16`` or ``uint32``).
        block_tokens: tokens per block (the last block may be shorter).
        num_tokens, num_docs, num_blocks: counts.
        tokens: all tokens as one 1-D array (a memmap view for paths; nothing is copied).
        doc_offsets: ``num_docs + 1`` cumulative token offsets; document i is
            ``tokens[doc_offsets[i]:doc_offsets[i + 1]]``.
        blocks: structured array with fields ``offset``, ``length``, ``xxh3``.

    Args:
        source: a local file path, or bytes / a buffer holding the whole shard.
        name: how errors name this shard (its object key).
    """

    def __init__(self, source: str | Path | bytes | memoryview | np.ndarray, *, name: str | None = None) -> None:
        self.name = name or (str(source) if isinstance(source, (str, Path)) else "<buffer>")
        raw: np.ndarray[Any, np.dtype[np.uint8]]
        if isinstance(source, (str, Path)):
            raw = np.memmap(source, dtype=np.uint8, mode="r")
        else:
            raw = np.frombuffer(source, dtype=np.uint8)
        self._raw = raw
        self._parse()
        self._verified = np.zeros(self.num_blocks, dtype=bool)

    def _bad(self, why: str) -> IntegrityError:
        return IntegrityError(f"token shard {self.name} is damaged: {why}", key=self.name)

    def _parse(self) -> None:
        raw = self._raw
        if raw.size < HEADER_SIZE + TRAILER.size:
            raise self._bad(f"only {raw.size} bytes (truncated)")
        magic, version, code, block_tokens = HEADER.unpack(raw[: HEADER.size].tobytes())
        if magic != MAGIC:
            raise self._bad("bad magic in header (not a token shard)")
        if version != VERSION or code not in DTYPES:
            raise self._bad(f"unsupported version {version} or dtype code {code}")
        footer_offset, tail_magic = TRAILER.unpack(raw[raw.size - TRAILER.size :].tobytes())
        if tail_magic != MAGIC or not HEADER_SIZE <= footer_offset <= raw.size - TRAILER.size - FOOTER_HEAD.size:
            raise self._bad("bad trailer (truncated or overwritten end of file)")
        head_end = footer_offset + FOOTER_HEAD.size
        nblocks, ndocs, ntokens = FOOTER_HEAD.unpack(raw[footer_offset:head_end].tobytes())
        blocks_end = head_end + nblocks * BLOCK_ENTRY.itemsize
        docs_end = blocks_end + (ndocs + 1) * 8
        if docs_end != raw.size - TRAILER.size:
            raise self._bad("footer sizes do not add up")
        self.dtype = DTYPES[code]
        self.block_tokens = int(block_tokens)
        self.num_blocks = int(nblocks)
        self.num_docs = int(ndocs)
        self.num_tokens = int(ntokens)
        self.blocks = raw[head_end:blocks_end].view(BLOCK_ENTRY)
        self.doc_offsets = raw[blocks_end:docs_end].view("<u8")
        data_end = HEADER_SIZE + self.num_tokens * self.dtype.itemsize
        if (data_end + 7) // 8 * 8 != footer_offset:
            raise self._bad(f"token data ends at {data_end} but the footer starts at {footer_offset}")
        if self.num_docs and int(self.doc_offsets[-1]) != self.num_tokens:
            raise self._bad("document boundaries do not end at the token count")
        self.tokens = raw[HEADER_SIZE:data_end].view(self.dtype)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` (a view)."""
        return self.tokens[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1])]

    def verify_block(self, i: int) -> None:
        """Check block ``i`` against its recorded xxh3-64 (once per reader)."""
        if self._verified[i]:
            return
        off, length, expected = (int(x) for x in self.blocks[i].tolist())
        actual = xxhash.xxh3_64_intdigest(self._raw[off : off + length].data)
        if actual != expected:
            raise IntegrityError(
                f"token shard {self.name} block {i} failed its checksum",
                key=self.name,
                expected=f"{expected:016x}",
                actual=f"{actual:016x}",
                hint="run `granary verify REF` and restore the shard from a replica",
            )
        self._verified[i] = True

    def verify_range(self, start: int, stop: int) -> None:
        """Verify every block that holds a token in ``[start, stop)``."""
        if stop <= start:
            return
        for b in range(start // self.block_tokens, (stop - 1) // self.block_tokens + 1):
            self.verify_block(b)

    def verify(self) -> list[int]:
        """Check every block; return the indices of bad blocks (empty when all are good)."""
        bad = []
        for i in range(self.num_blocks):
            try:
                self.verify_block(i)
            except IntegrityError:
                bad.append(i)
        return bad
