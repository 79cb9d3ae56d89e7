"""Token shards: flat little-endian token arrays in checksummed blocks with a footer (see README.md)."""

from __future__ import annotations

from granary.store.formats.tokens.reader import TokenShardReader
from granary.store.formats.tokens.writer import TokenShardWriter

__all__ = ["TokenShardReader", "TokenShardWriter"]
