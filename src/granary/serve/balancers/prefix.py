"""Prefix-cache-aware routing for LLMs: send a prompt where its longest prefix is probably cached already."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from granary.serve.backend import Backend
from granary.serve.balancers.base import Balancer, RequestInfo, hash64, register


def block_hashes(text: str, block_chars: int) -> list[int]:
    """Chained hashes of the full ``block_chars`` blocks of ``text``: block i's hash covers blocks 0..i, so equal
    hashes mean equal prefixes (as in the paged KV caches of vLLM and SGLang)."""
    out: list[int] = []
    h = 0
    data = text.encode("utf-8", "surrogatepass")
    for start in range(0, len(data) - block_chars + 1, block_chars):
        h = hash64(data[start:start + block_chars], seed=h)
        out.append(h)
    return out


def prompt_of(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The prompt text of an OpenAI request body and its affinity key.

    Chat messages are joined as ``role\\x1fcontent\\x1e``; the affinity key is the conversation's start (the
    messages up to the first user message), which every later turn of the same conversation shares.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        affinity: str | None = None
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            parts.append(f"{m.get('role', '')}\x1f{content if isinstance(content, str) else ''}\x1e")
            if affinity is None and m.get("role") == "user":
                affinity = "".join(parts)
        text = "".join(parts)
        return text, affinity or text
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    return None, None


@register
class PrefixAwareBalancer(Balancer):
    """Route to the backend whose KV cache most probably holds the longest prefix of the prompt.

    Each worker keeps an approximate index: for every backend, an LRU set of the chained block hashes of the
    prompts it sent there (what the engine's prefix cache will hold, give or take evictions). A pick:

    1. finds the available backends sharing the longest run of leading blocks with the prompt; if that run
       covers the conversation's own start (its affinity key: the messages up to the first user message, or the
       first ``affinity_blocks`` blocks of a plain prompt), those backends are the candidates, else all are
       (a shared system prompt alone says nothing about where a conversation lives);
    2. among the candidates takes the one the affinity key ranks first by rendezvous hashing, so worker
       processes that never saw the conversation agree on where it goes without sharing state;
    3. falls back to the least loaded backend when the chosen one has ``busy_threshold`` more requests in flight
       than the least loaded (the load fallback), and records the prompt's blocks under the final choice.

    Args:
        block_chars: bytes per block (about 4 per token; vLLM blocks are 16 tokens).
        blocks_per_backend: LRU capacity of each backend's index.
        affinity_blocks: blocks of a plain prompt used as its affinity key.
        busy_threshold: requests in flight above the least loaded backend that count as busy.
    """

    name = "prefix_aware"
    needs_prompt = True

    def __init__(self, *, block_chars: int = 128, blocks_per_backend: int = 100_000, affinity_blocks: int = 4,
                 busy_threshold: int = 8, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        for pname, value, low in (("block_chars", block_chars, 8), ("blocks_per_backend", blocks_per_backend, 1),
                                  ("affinity_blocks", affinity_blocks, 1), ("busy_threshold", busy_threshold, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{pname} must be an integer >= {low}, got {value!r}")
        self.block_chars = block_chars
        self.capacity = blocks_per_backend
        self.affinity_blocks = affinity_blocks
        self.busy_threshold = busy_threshold
        self.lru: dict[str, OrderedDict[int, None]] = {}
        self.holders: dict[int, set[str]] = {}
        self.hits = 0
        self.fallbacks = 0

    def update(self, members: Sequence[Backend]) -> None:
        """Forget the index of removed backends."""
        names = {b.name for b in members}
        for gone in [n for n in self.lru if n not in names]:
            for h in self.lru.pop(gone):
                self._unhold(h, gone)

    def match(self, hashes: Sequence[int], backends: Sequence[Backend]) -> tuple[int, list[Backend]]:
        """The longest run of leading blocks held by some available backend, and the backends holding it."""
        candidates = {b.name for b in backends}
        matched = 0
        for h in hashes:
            holders = self.holders.get(h)
            if not holders:
                break
            narrowed = candidates & holders
            if not narrowed:
                break
            candidates = narrowed
            matched += 1
        if matched == 0:
            return 0, list(backends)
        return matched, [b for b in backends if b.name in candidates]

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The backend with the longest cached prefix, unless it is busy."""
        hashes = block_hashes(req.prompt, self.block_chars) if req.prompt else []
        matched, holders = self.match(hashes, backends)
        if req.key is not None:
            affinity = req.key
            own = max(1, len(affinity.encode("utf-8", "surrogatepass")) // self.block_chars)
        else:
            affinity = (req.prompt or "")[:self.affinity_blocks * self.block_chars]
            own = max(1, min(self.affinity_blocks, len(hashes)))
        # Only a match that covers the conversation's own start says where *this* conversation lives; a match
        # of a shared system prompt alone would pull every new conversation onto one backend.
        candidates = holders if matched >= own else backends
        akey = hash64(affinity)
        chosen = max(candidates, key=lambda b: hash64(b.name, seed=akey))
        least = min(backends, key=lambda b: (b.in_flight, hash64(b.name, seed=akey)))
        if chosen.in_flight > least.in_flight + self.busy_threshold:
            chosen = least
            self.fallbacks += 1
        elif matched >= own:
            self.hits += 1
        if hashes:
            self.record(chosen.name, hashes)
        return chosen

    def record(self, name: str, hashes: Sequence[int]) -> None:
        """Note that ``name`` now caches these blocks (most recent last), evicting its least recently used ones."""
        lru = self.lru.setdefault(name, OrderedDict())
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                self.holders.setdefault(h, set()).add(name)
        while len(lru) > self.capacity:
            old, _ = lru.popitem(last=False)
            self._unhold(old, name)

    def _unhold(self, h: int, name: str) -> None:
        holders = self.holders.get(h)
        if holders is not None:
            holders.discard(name)
            if not holders:
                del self.holders[h]
