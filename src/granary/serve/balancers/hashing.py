"""Hash policies: IP hash, a consistent-hash ring with virtual nodes and bounded load, and Maglev."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from granary.serve.backend import Backend
from granary.serve.balancers.base import Balancer, RequestInfo, hash64, parse_key_source, register


def _fallback_key(req: RequestInfo) -> str:
    return req.key if req.key is not None else req.client_ip


@register
class IpHashBalancer(Balancer):
    """The client address picks the backend (nginx's ``ip_hash``): a client sticks to one backend while the set
    of available backends stays the same. When the chosen backend is out, the key is re-hashed (up to 20 times),
    then the pick falls back to the first available backend in hash order.
    """

    name = "ip_hash"

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.key_source = ("ip", "")
        self.members: list[Backend] = []
        self.cumulative: list[float] = []

    def update(self, members: Sequence[Backend]) -> None:
        """Lay the members out on a line, each taking a share of it equal to its weight."""
        self.members = sorted(members, key=lambda b: b.name)
        self.cumulative = []
        total = 0.0
        for b in self.members:
            total += b.weight
            self.cumulative.append(total)

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The member the client's address hashes to, if it is available."""
        if not self.members:
            self.update(backends)
        available = {id(b) for b in backends}
        total = self.cumulative[-1]
        key = req.client_ip.encode()
        for attempt in range(20):
            point = hash64(key, seed=attempt) / 2.0**64 * total
            chosen = self.members[min(bisect.bisect_right(self.cumulative, point), len(self.members) - 1)]
            if id(chosen) in available:
                return chosen
        return min(backends, key=lambda b: hash64(key + b.name.encode()))


@register
class RingHashBalancer(Balancer):
    """Consistent hashing on a ring of virtual nodes, with bounded load (Mirrokni, Thorup, Zadimoghaddam, 2018).

    A key (session header, cookie, the OpenAI ``user`` field or the client IP) maps to the first virtual node
    clockwise from its hash. Adding a backend moves only the keys that now land on it (about 1/n of them).
    With ``load_factor`` c, a backend already holding ceil(c x (in flight + 1) x weight share) requests is
    passed over for the next one on the ring, so no backend gets more than about c times its fair share.

    Args:
        key: where the key comes from: ``ip``, ``header:NAME``, ``cookie:NAME`` or ``body:FIELD``.
        vnodes: virtual nodes per unit of weight.
        load_factor: c >= 1 for bounded load, or None for plain consistent hashing.
    """

    name = "ring_hash"

    def __init__(self, *, key: str = "header:x-session-id", vnodes: int = 160, load_factor: float | None = 1.25,
                 seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.key_source = parse_key_source(key)
        if not isinstance(vnodes, int) or not 1 <= vnodes <= 10_000:
            raise ValueError(f"vnodes must be an integer in [1, 10000], got {vnodes!r}")
        if load_factor is not None and not load_factor >= 1.0:
            raise ValueError(f"load_factor must be >= 1 (or null for no bound), got {load_factor!r}")
        self.vnodes = vnodes
        self.load_factor = load_factor
        self.points: list[int] = []
        self.owners: list[Backend] = []

    def update(self, members: Sequence[Backend]) -> None:
        """Place ``vnodes x weight`` points of each member on the ring."""
        ring: list[tuple[int, str, Backend]] = []
        for b in members:
            for i in range(max(1, round(self.vnodes * b.weight))):
                ring.append((hash64(f"{b.name}#{i}"), b.name, b))
        ring.sort(key=lambda p: (p[0], p[1]))
        self.points = [p[0] for p in ring]
        self.owners = [p[2] for p in ring]

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The first available backend clockwise from the key's hash that is under its load bound."""
        if not self.points:
            self.update(backends)
        available = {id(b) for b in backends}
        bound = self._bounds(backends, now)
        start = bisect.bisect_left(self.points, hash64(_fallback_key(req)))
        n = len(self.points)
        for step in range(n):
            b = self.owners[(start + step) % n]
            if id(b) in available and (bound is None or b.in_flight < bound[id(b)]):
                return b
        return min(backends, key=lambda b: b.in_flight)  # members changed under us; keep serving

    def _bounds(self, backends: Sequence[Backend], now: float) -> dict[int, int] | None:
        if self.load_factor is None:
            return None
        total_w = sum(b.effective_weight(now) for b in backends)
        load = sum(b.in_flight for b in backends) + 1
        return {id(b): math.ceil(self.load_factor * load * b.effective_weight(now) / total_w) for b in backends}


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


@register
class MaglevBalancer(Balancer):
    """Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of ``table_size`` slots filled from each
    backend's own permutation. O(1) lookups, even spread, and little disruption when a backend comes or goes.

    The table is rebuilt for the set of available backends (cached per set), as Envoy does.

    Args:
        key: where the key comes from (see RingHashBalancer).
        table_size: a prime, at least 100 times the number of backends.
    """

    name = "maglev"

    def __init__(self, *, key: str = "header:x-session-id", table_size: int = 4093, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.key_source = parse_key_source(key)
        if not isinstance(table_size, int) or not _is_prime(table_size) or table_size < 7:
            raise ValueError(f"table_size must be a prime >= 7, got {table_size!r}")
        self.table_size = table_size
        self.tables: dict[tuple[tuple[str, float], ...], list[Backend]] = {}

    def update(self, members: Sequence[Backend]) -> None:
        """Drop cached tables (weights or members changed)."""
        self.tables.clear()

    def table(self, backends: Sequence[Backend]) -> list[Backend]:
        """The lookup table for this set of backends (built once per set)."""
        sig = tuple(sorted((b.name, b.weight) for b in backends))
        table = self.tables.get(sig)
        if table is None:
            if len(self.tables) > 64:
                self.tables.clear()
            table = self.tables[sig] = build_maglev_table(backends, self.table_size)
        return table

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The backend in the key's slot of the table."""
        table = self.table(backends)
        return table[hash64(_fallback_key(req)) % self.table_size]


def build_maglev_table(backends: Sequence[Backend], size: int) -> list[Backend]:
    """Fill ``size`` slots: backends take turns claiming the next free slot of their own permutation;
    a backend with a larger weight gets proportionally more turns."""
    members = sorted(backends, key=lambda b: b.name)
    offsets = [hash64(b.name, seed=1) % size for b in members]
    skips = [hash64(b.name, seed=2) % (size - 1) + 1 for b in members]
    nexts = [0] * len(members)
    max_w = max(b.weight for b in members)
    credit = [0.0] * len(members)
    entry: list[Backend | None] = [None] * size
    filled = 0
    while True:
        for i, b in enumerate(members):
            credit[i] += b.weight / max_w
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            off, skip, j = offsets[i], skips[i], nexts[i]
            slot = (off + j * skip) % size
            while entry[slot] is not None:
                j += 1
                slot = (off + j * skip) % size
            entry[slot] = b
            nexts[i] = j + 1
            filled += 1
            if filled == size:
                return entry  # type: ignore[return-value]
