"""The simulated engine's prefix KV cache: fixed-size token blocks, chained hashes, LRU eviction."""

from __future__ import annotations

from collections import OrderedDict

from granary.serve.balancers.base import hash64

BYTES_PER_TOKEN = 4


class PrefixCache:
    """Which prompt blocks an engine holds, as vLLM's automatic prefix caching does: a prompt reuses the KV
    entries of its longest cached run of leading blocks, and every block of a prompt is cached after it runs.

    Args:
        capacity_blocks: blocks the cache holds; the least recently used are evicted.
        block_tokens: tokens per block (vLLM's default is 16).
    """

    def __init__(self, capacity_blocks: int = 4096, block_tokens: int = 16) -> None:
        if capacity_blocks < 1 or block_tokens < 1:
            raise ValueError("capacity_blocks and block_tokens must be >= 1")
        self.capacity = capacity_blocks
        self.block_bytes = block_tokens * BYTES_PER_TOKEN
        self.block_tokens = block_tokens
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def hashes(self, prompt: bytes) -> list[int]:
        """Chained hashes of the full blocks of ``prompt``."""
        out: list[int] = []
        h = 0
        for start in range(0, len(prompt) - self.block_bytes + 1, self.block_bytes):
            h = hash64(prompt[start:start + self.block_bytes], seed=h)
            out.append(h)
        return out

    def lookup_and_insert(self, prompt: bytes) -> tuple[int, int]:
        """Run a prompt through the cache: returns (prompt tokens, tokens that were cached already)."""
        tokens = max(1, len(prompt) // BYTES_PER_TOKEN)
        hashes = self.hashes(prompt)
        cached = 0
        for h in hashes:
            if h not in self.blocks:
                break
            cached += 1
        for h in hashes:
            if h in self.blocks:
                self.blocks.move_to_end(h)
            else:
                self.blocks[h] = None
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        self.queries += tokens
        self.hits += cached * self.block_tokens
        return tokens, min(tokens, cached * self.block_tokens)

    @property
    def usage(self) -> float:
        """Share of the cache in use."""
        return len(self.blocks) / self.capacity
