"""What every balancing policy implements, the request facts it may use, and the registry of policies by name."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import xxhash

from granary.serve.backend import Backend


@dataclass(slots=True)
class RequestInfo:
    """The facts of a request a policy may use; the proxy fills only what the policy asks for.

    Attributes:
        client_ip: the peer address.
        key: the hash key (from a header, a cookie, the JSON ``user`` field or the client IP), per ``key_source``.
        prompt: the prompt text (completions) or the concatenated messages (chat), for prefix-aware routing.
        method: the HTTP method.
        path: the request path.
        cost: the work the policy booked for the request on the backend it picked (released in ``on_done``).
        picked_at: when the policy picked its backend.
    """

    client_ip: str = ""
    key: str | None = None
    prompt: str | None = None
    method: str = "GET"
    path: str = "/"
    cost: float = 0.0
    picked_at: float = 0.0


def hash64(data: str | bytes, seed: int = 0) -> int:
    """A fast, stable 64-bit hash (xxh64), the same in every process and run."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return xxhash.xxh64_intdigest(data, seed=seed)


def parse_key_source(spec: str) -> tuple[str, str]:
    """Split ``header:X-Session``, ``cookie:sid``, ``body:user`` or ``ip`` into (kind, name)."""
    kind, _, name = spec.partition(":")
    if kind == "ip" and not name:
        return kind, ""
    if kind not in ("header", "cookie", "body") or not name:
        raise ValueError(f"key must be 'ip', 'header:NAME', 'cookie:NAME' or 'body:FIELD', got {spec!r}")
    return kind, name.lower() if kind == "header" else name


class Balancer:
    """Picks a backend for a request among the available ones. Pure: no I/O, no clock of its own.

    Subclasses set ``name`` and implement :meth:`pick`. The pool calls :meth:`update` when the route's membership
    changes (added, removed or re-weighted backends), :meth:`pick` with the backends available now (never empty),
    and :meth:`on_done` when a response ends.

    Args:
        seed: seed of the policy's random choices (tests); None draws one.
    """

    name: ClassVar[str] = ""
    needs_prompt: ClassVar[bool] = False
    shares_state: ClassVar[bool] = False
    key_source: tuple[str, str] | None = None

    def __init__(self, *, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    def attach(self, shared: Any) -> None:
        """Worker processes share ``shared`` (a ``SharedRouteState``); policies that use it keep it."""

    def update(self, members: Sequence[Backend]) -> None:
        """The route's backends changed (all members, available or not)."""

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """Choose one of ``backends`` (the available ones, at least one) for ``req``."""
        raise NotImplementedError

    def on_first_byte(self, backend: Backend, req: RequestInfo, now: float) -> None:
        """The response of a request sent to ``backend`` started flowing (a stream's first token is out)."""

    def on_done(self, backend: Backend, req: RequestInfo, *, ok: bool, latency_s: float, now: float) -> None:
        """A request sent to ``backend`` ended (``latency_s`` to its first byte, or to its failure)."""


POLICIES: dict[str, type[Balancer]] = {}


def register(cls: type[Balancer]) -> type[Balancer]:
    """Class decorator: add a policy to the registry under its ``name``."""
    assert cls.name and cls.name not in POLICIES, cls
    POLICIES[cls.name] = cls
    return cls


def make_balancer(name: str, params: Mapping[str, Any] | None = None) -> Balancer:
    """Build the policy registered as ``name`` with keyword ``params``.

    Raises:
        KeyError: no such policy.
        TypeError, ValueError: bad parameters.
    """
    cls = POLICIES[name]
    return cls(**dict(params or {}))


def weighted_min(backends: Sequence[Backend], cost: Callable[[Backend], float], rng: random.Random) -> Backend:
    """The backend of least cost; ties are broken at random so equal backends share the load."""
    best: list[Backend] = []
    best_cost = float("inf")
    for b in backends:
        c = cost(b)
        if c < best_cost:
            best_cost, best = c, [b]
        elif c == best_cost:
            best.append(b)
    return best[0] if len(best) == 1 else rng.choice(best)
