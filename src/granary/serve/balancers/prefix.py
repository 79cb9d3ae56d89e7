"""Prefix-cache-aware routing for LLMs: send a prompt where its longest prefix is probably cached already."""

from __future__ import annotations

import math
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

    The index of what each backend caches and the work in flight on each are shared by the gateway's worker
    processes through memory (:mod:`granary.serve.balancers.shared`): the chained hashes of the prompt blocks
    sent to each backend (what the engine's prefix cache holds, give or take evictions), the last placement of
    each conversation (its affinity key: the messages up to the first user message, or the first
    ``affinity_blocks`` blocks of a plain prompt), and per backend the prefill work and the requests in flight
    from every worker. A pick:

    1. finds, per available backend, how many leading blocks of the prompt it caches (the longer of what the
       block index knows and the conversation's last placement);
    2. costs each backend: the prefill work queued there (uncached blocks of its requests in flight, from every
       worker, until their first byte comes back) plus this prompt's work there (uncached blocks, plus
       ``cached_cost`` per cached block, plus ``request_cost_blocks``), divided by its weight; takes the
       cheapest, ties broken by rendezvous hashing on the affinity key (so workers agree on a new
       conversation's home when loads are equal). A cached conversation stays home until the work queued there
       outweighs a cold prefill elsewhere; new conversations, whose shared system prompt is cached everywhere,
       go where the least work waits;
    3. as a last resort falls back to the backend with the fewest requests in flight (from every worker) when
       the choice has ``busy_threshold`` more than it, and records the prompt's blocks under the final choice.

    Args:
        block_chars: bytes per block (about 4 per token; vLLM blocks are 16 tokens, so 64).
        affinity_blocks: blocks of a plain prompt used as its affinity key.
        busy_threshold: requests in flight above the least loaded backend that force the load fallback.
        cached_cost: work of a cached block relative to an uncached one (an engine reads it from its cache).
        request_cost_blocks: fixed work of any request, in blocks (so short prompts still spread by load).
        seed: unused (the policy is deterministic); accepted as by every policy.
    """

    name = "prefix_aware"
    needs_prompt = True
    shares_state = True

    def __init__(self, *, block_chars: int = 64, affinity_blocks: int = 4, busy_threshold: int = 8,
                 cached_cost: float = 0.02, request_cost_blocks: float = 1.0, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        for pname, value, low in (("block_chars", block_chars, 8), ("affinity_blocks", affinity_blocks, 1),
                                  ("busy_threshold", busy_threshold, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{pname} must be an integer >= {low}, got {value!r}")
        for pname, fvalue in (("cached_cost", cached_cost), ("request_cost_blocks", request_cost_blocks)):
            if isinstance(fvalue, bool) or not isinstance(fvalue, int | float) or not 0 <= fvalue <= 1e6:
                raise ValueError(f"{pname} must be a number >= 0, got {fvalue!r}")
        self.block_chars = block_chars
        self.affinity_blocks = affinity_blocks
        self.busy_threshold = busy_threshold
        self.cached_cost = float(cached_cost)
        self.request_cost = float(request_cost_blocks)
        self.pending: dict[str, float] = {}
        self._shared: SharedRouteState | None = None
        self._hashes: dict[str, int] = {}
        self._members: set[str] = set()
        self.hits = 0
        self.fallbacks = 0

    @property
    def shared(self) -> SharedRouteState:
        """The shared state (a private one until :meth:`attach` gives the workers' common one)."""
        if self._shared is None:
            self._shared = SharedRouteState.in_memory()
        return self._shared

    def attach(self, shared: SharedRouteState) -> None:
        """Share the block index, placements and load with the other workers through ``shared``."""
        self._shared = shared

    def update(self, members: Sequence[Backend]) -> None:
        """Forget the index and the load of removed backends."""
        names = {b.name for b in members}
        for gone in self._members - names:
            self.shared.release(self._hash(gone))
        self._members = names
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
        """For each backend, how many leading blocks of the prompt the block index says it caches."""
        shared = self.shared
        bits = {b.name: shared.bit(self._hash(b.name)) for b in backends}
        alive = 0
        for bit in bits.values():
            alive |= bit
        at: dict[int, int] = {}  # bit -> depth where it dropped out
        depth = 0
        for h in hashes:
            still = alive & shared.holders(h)
            gone = alive & ~still
            while gone:
                low = gone & -gone
                at[low] = depth
                gone ^= low
            alive = still
            if not alive:
                break
            depth += 1
        return {name: (depth if bit & alive else at.get(bit, 0)) if bit else 0 for name, bit in bits.items()}

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The backend with the least expected work before this prompt's first token."""
        shared = self.shared
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
        placed = shared.placement(akey) if n else None
        if placed is not None:
            for b in backends:
                if self._hash(b.name) == placed[0]:
                    depth[b.name] = max(depth.get(b.name, 0), min(placed[1], n))
                    break
        chosen = least = backends[0]
        best = (math.inf, 0)
        fewest = (math.inf, 0)
        flights: dict[str, float] = {}
        for b in backends:
            work, requests = shared.others(self._hash(b.name))
            tie = -hash64(b.name, seed=akey)
            cost = (self.pending.get(b.name, 0.0) + work + self.work(n, depth.get(b.name, 0))) / \
                b.effective_weight(now)
            if (cost, tie) < best:
                best, chosen = (cost, tie), b
            flights[b.name] = flight = b.in_flight + requests
            if (flight, tie) < fewest:
                fewest, least = (flight, tie), b
        if flights[chosen.name] > flights[least.name] + self.busy_threshold:
            chosen = least
            self.fallbacks += 1
        elif depth.get(chosen.name, 0) >= own:
            self.hits += 1
        req.cost = self.work(n, depth.get(chosen.name, 0))
        self._add_load(chosen, req.cost, 1)
        if hashes:
            self.record(chosen.name, hashes)
            shared.place(akey, self._hash(chosen.name), n)
        return chosen

    def on_first_byte(self, backend: Backend, req: RequestInfo, now: float) -> None:
        """The prompt is processed (its first token is out): its prefill work leaves the backend's queue."""
        self._add_load(backend, -req.cost, 0)
        req.cost = 0.0

    def on_done(self, backend: Backend, req: RequestInfo, *, ok: bool, latency_s: float, now: float) -> None:
        """The request ended (its work left the queue, if the first byte did not take it out already)."""
        self._add_load(backend, -req.cost, -1)
        req.cost = 0.0

    def work(self, blocks: int, cached: int) -> float:
        """Prefill work of a prompt of ``blocks`` blocks of which ``cached`` are cached, in blocks."""
        return (blocks - cached) + self.cached_cost * cached + self.request_cost

    def load(self, b: Backend) -> float:
        """Work in flight on ``b`` from every worker, in blocks."""
        return self.pending.get(b.name, 0.0) + self.shared.others(self._hash(b.name))[0]

    def _add_load(self, b: Backend, delta: float, requests: int) -> None:
        if delta:
            self.pending[b.name] = max(0.0, self.pending.get(b.name, 0.0) + delta)
        if delta or requests:
            self.shared.add_load(self._hash(b.name), delta, requests)

    def _hash(self, name: str) -> int:
        h = self._hashes.get(name)
        if h is None:
            h = self._hashes[name] = hash64(name) or 1
        return h

    def record(self, name: str, hashes: Sequence[int]) -> None:
        """Note that ``name`` now caches these blocks."""
        bit = self.shared.bit(self._hash(name))
        if bit:
            self.shared.hold(list(hashes), bit)
