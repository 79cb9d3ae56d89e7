"""Prefix-cache-aware routing for LLMs: send a prompt where its longest prefix is probably cached already."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from granary.serve.backend import Backend
from granary.serve.balancers.base import Balancer, RequestInfo, hash64, register
from granary.serve.balancers.shared import SharedRouteState


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
    """Route to the backend where the prompt's time to first token is expected to be least: cached prefix
    against queued work.

    Each worker keeps an approximate index: for every backend, an LRU set of the chained block hashes of the
    prompts it sent there (what the engine's prefix cache will hold, give or take evictions). Worker processes
    also share, through memory, the last placement of each conversation (its affinity key: the messages up to
    the first user message, or the first ``affinity_blocks`` blocks of a plain prompt) and the work each has in
    flight per backend (:mod:`granary.serve.balancers.shared`). A pick:

    1. finds, per available backend, how many leading blocks of the prompt it caches (the longer of what this
       worker's index knows and the conversation's shared placement);
    2. costs each backend: the prefill work queued there (blocks of requests in flight, from every worker) plus
       this prompt's work there (uncached blocks, plus ``cached_cost`` per cached block, plus
       ``request_cost_blocks``), divided by its weight; takes the cheapest, ties broken by rendezvous hashing on
       the affinity key (so workers agree on a new conversation's home when loads are equal). A cached
       conversation stays home until the work queued there outweighs a cold prefill elsewhere; new
       conversations, whose shared system prompt is cached everywhere, go where the least work waits;
    3. as a last resort falls back to the backend with the fewest requests in flight when the choice has
       ``busy_threshold`` more than it, and records the prompt's blocks under the final choice.

    Args:
        block_chars: bytes per block (about 4 per token; vLLM blocks are 16 tokens).
        blocks_per_backend: LRU capacity of each backend's index.
        affinity_blocks: blocks of a plain prompt used as its affinity key.
        busy_threshold: requests in flight above the least loaded backend that force the load fallback.
        cached_cost: work of a cached block relative to an uncached one (an engine reads it from its cache).
        request_cost_blocks: fixed work of any request, in blocks (so short prompts still spread by load).
    """

    name = "prefix_aware"
    needs_prompt = True
    shares_state = True

    def __init__(self, *, block_chars: int = 128, blocks_per_backend: int = 100_000, affinity_blocks: int = 4,
                 busy_threshold: int = 8, cached_cost: float = 0.05, request_cost_blocks: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__(seed=seed)
        for pname, value, low in (("block_chars", block_chars, 8), ("blocks_per_backend", blocks_per_backend, 1),
                                  ("affinity_blocks", affinity_blocks, 1), ("busy_threshold", busy_threshold, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{pname} must be an integer >= {low}, got {value!r}")
        for pname, fvalue in (("cached_cost", cached_cost), ("request_cost_blocks", request_cost_blocks)):
            if isinstance(fvalue, bool) or not isinstance(fvalue, int | float) or not 0 <= fvalue <= 1e6:
                raise ValueError(f"{pname} must be a number >= 0, got {fvalue!r}")
        self.block_chars = block_chars
        self.capacity = blocks_per_backend
        self.affinity_blocks = affinity_blocks
        self.busy_threshold = busy_threshold
        self.cached_cost = float(cached_cost)
        self.request_cost = float(request_cost_blocks)
        self.lru: dict[str, OrderedDict[int, None]] = {}
        self.holders: dict[int, set[str]] = {}
        self.pending: dict[str, float] = {}
        self.shared: SharedRouteState | None = None
        self._hashes: dict[str, int] = {}
        self.hits = 0
        self.fallbacks = 0

    def attach(self, shared: SharedRouteState) -> None:
        """Share placements and load with the other workers through ``shared``."""
        self.shared = shared

    def update(self, members: Sequence[Backend]) -> None:
        """Forget the index and the load of removed backends."""
        names = {b.name for b in members}
        for gone in [n for n in self.lru if n not in names]:
            for h in self.lru.pop(gone):
                self._unhold(h, gone)
        for gone in [n for n in self.pending if n not in names]:
            del self.pending[gone]

    def match(self, hashes: Sequence[int], backends: Sequence[Backend]) -> tuple[int, list[Backend]]:
        """The longest run of leading blocks held by some available backend, and the backends holding it."""
        depth = self.depths(hashes, backends)
        longest = max(depth.values(), default=0)
        if longest == 0:
            return 0, list(backends)
        return longest, [b for b in backends if depth.get(b.name, 0) == longest]

    def depths(self, hashes: Sequence[int], backends: Sequence[Backend]) -> dict[str, int]:
        """For each backend, how many leading blocks of the prompt this worker's index says it caches."""
        out: dict[str, int] = {}
        alive = {b.name for b in backends}
        depth = 0
        for h in hashes:
            holders = self.holders.get(h)
            still = alive & holders if holders else set()
            for name in alive - still:
                out[name] = depth
            alive = still
            if not alive:
                break
            depth += 1
        for name in alive:
            out[name] = depth
        return out

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The backend with the least expected work before this prompt's first token."""
        hashes = block_hashes(req.prompt, self.block_chars) if req.prompt else []
        n = len(hashes)
        depth = self.depths(hashes, backends) if hashes else {}
        if req.key is not None:
            affinity = req.key
            own = max(1, len(affinity.encode("utf-8", "surrogatepass")) // self.block_chars)
        else:
            affinity = (req.prompt or "")[:self.affinity_blocks * self.block_chars]
            own = max(1, min(self.affinity_blocks, n))
        akey = hash64(affinity)
        placed = self.shared.placement(akey) if self.shared is not None and n else None
        if placed is not None:
            for b in backends:
                if self._hash(b.name) == placed[0]:
                    depth[b.name] = max(depth.get(b.name, 0), min(placed[1], n))
                    break
        chosen = backends[0]
        best = (math.inf, 0)
        for b in backends:
            cost = (self.load(b) + self.work(n, depth.get(b.name, 0))) / b.effective_weight(now)
            rank = (cost, -hash64(b.name, seed=akey))
            if rank < best:
                best, chosen = rank, b
        least = min(backends, key=lambda b: (b.in_flight, hash64(b.name, seed=akey)))
        if chosen.in_flight > least.in_flight + self.busy_threshold:
            chosen = least
            self.fallbacks += 1
        elif depth.get(chosen.name, 0) >= own:
            self.hits += 1
        req.cost = self.work(n, depth.get(chosen.name, 0))
        self._add_load(chosen, req.cost)
        if hashes:
            self.record(chosen.name, hashes)
            if self.shared is not None:
                self.shared.place(akey, self._hash(chosen.name), n)
        return chosen

    def on_first_byte(self, backend: Backend, req: RequestInfo, now: float) -> None:
        """The prompt is processed (its first token is out): its prefill work leaves the backend's queue."""
        self._add_load(backend, -req.cost)
        req.cost = 0.0

    def on_done(self, backend: Backend, req: RequestInfo, *, ok: bool, latency_s: float, now: float) -> None:
        """The request ended (its work left the queue, if the first byte did not take it out already)."""
        self._add_load(backend, -req.cost)
        req.cost = 0.0

    def work(self, blocks: int, cached: int) -> float:
        """Prefill work of a prompt of ``blocks`` blocks of which ``cached`` are cached, in blocks."""
        return (blocks - cached) + self.cached_cost * cached + self.request_cost

    def load(self, b: Backend) -> float:
        """Work in flight on ``b`` from every worker, in blocks."""
        local = self.pending.get(b.name, 0.0)
        if self.shared is None:
            return local
        return local + self.shared.others_load(self._hash(b.name))

    def _add_load(self, b: Backend, delta: float) -> None:
        if delta:
            self.pending[b.name] = max(0.0, self.pending.get(b.name, 0.0) + delta)
            if self.shared is not None:
                self.shared.add_load(self._hash(b.name), delta)

    def _hash(self, name: str) -> int:
        h = self._hashes.get(name)
        if h is None:
            h = self._hashes[name] = hash64(name) or 1
        return h

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
