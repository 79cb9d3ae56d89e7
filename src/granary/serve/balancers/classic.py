"""The classic policies: round robin, smooth weighted round robin, random, least request, power of two choices."""

from __future__ import annotations

from collections.abc import Sequence

from granary.serve.backend import Backend
from granary.serve.balancers.base import Balancer, RequestInfo, register, weighted_min


@register
class RoundRobinBalancer(Balancer):
    """Each available backend in turn, ignoring weights. Choose it for identical backends and uniform requests."""

    name = "round_robin"

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.counter = 0

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The next backend in the cycle."""
        self.counter += 1
        return backends[self.counter % len(backends)]


@register
class SmoothWeightedRoundRobinBalancer(Balancer):
    """nginx's smooth weighted round robin: every window of sum(weights) picks gives each backend its weight,
    and a heavy backend's turns are spread out instead of coming in a burst.

    Each pick adds every backend's effective weight to its running score, takes the highest score and subtracts
    the total weight from it. Slow start lowers a new backend's effective weight for a while.
    """

    name = "weighted_round_robin"

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.current: dict[str, float] = {}

    def update(self, members: Sequence[Backend]) -> None:
        """Forget the scores of removed backends."""
        names = {b.name for b in members}
        self.current = {k: v for k, v in self.current.items() if k in names}

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The backend with the highest running score."""
        current = self.current
        total = 0.0
        best: Backend | None = None
        best_score = -float("inf")
        for b in backends:
            w = b.effective_weight(now)
            score = current.get(b.name, 0.0) + w
            current[b.name] = score
            total += w
            if score > best_score:
                best, best_score = b, score
        assert best is not None
        current[best.name] = best_score - total
        return best


@register
class RandomBalancer(Balancer):
    """A weighted random pick. Stateless, so it needs no coordination between worker processes."""

    name = "random"

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """A backend drawn with probability proportional to its effective weight."""
        weights = [b.effective_weight(now) for b in backends]
        return self.rng.choices(backends, weights=weights)[0]


@register
class LeastRequestBalancer(Balancer):
    """The backend with the fewest requests in flight per unit of weight (least outstanding requests).

    Best when request costs vary a lot (LLM generations of different lengths): a slow request keeps its
    backend busy and new work goes elsewhere. Counts are per worker process.
    """

    name = "least_request"

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The least loaded backend, ties broken at random."""
        return weighted_min(backends, lambda b: b.in_flight / b.effective_weight(now), self.rng)


@register
class PowerOfTwoBalancer(Balancer):
    """Power of two choices: draw two backends at random, keep the less loaded one.

    Nearly as good as least request, with no herd effect when several processes see the same stale counts.

    Args:
        choices: how many backends to draw (2 is the classic; more approaches least request).
    """

    name = "p2c"

    def __init__(self, *, choices: int = 2, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        if not isinstance(choices, int) or choices < 2:
            raise ValueError(f"choices must be an integer >= 2, got {choices!r}")
        self.choices = choices

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The least loaded of ``choices`` random backends."""
        if len(backends) <= self.choices:
            drawn: Sequence[Backend] = backends
        else:
            drawn = self.rng.sample(backends, self.choices)
        return weighted_min(drawn, lambda b: (b.in_flight + 1) / b.effective_weight(now), self.rng)
