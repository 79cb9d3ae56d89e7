"""Policies driven by measured load: latency-aware peak-EWMA, and load-aware weights from backend reports."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from granary.serve.backend import Backend
from granary.serve.balancers.base import Balancer, RequestInfo, register, weighted_min


class _Sampled(Balancer):
    """Shared by the adaptive policies: compare ``choices`` random backends (0: all) by a cost."""

    def __init__(self, *, choices: int = 2, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        if not isinstance(choices, int) or choices < 0 or choices == 1:
            raise ValueError(f"choices must be 0 (all backends) or an integer >= 2, got {choices!r}")
        self.choices = choices

    def drawn(self, backends: Sequence[Backend]) -> Sequence[Backend]:
        if self.choices == 0 or len(backends) <= self.choices:
            return backends
        return self.rng.sample(backends, self.choices)

    def least(self, backends: Sequence[Backend], cost: Callable[[Backend], float]) -> Backend:
        return weighted_min(self.drawn(backends), cost, self.rng)


@register
class PeakEwmaBalancer(_Sampled):
    """Latency-aware: cost = expected latency x (requests in flight + 1) / weight, over two random backends.

    The expected latency is the peak-EWMA of response latencies, which jumps up at once on a slow response and
    decays over ``decay_s``, so a backend that turns slow loses traffic within a few requests and wins it back
    gradually (Finagle, Linkerd); or, when larger, the age of the backend's oldest request still waiting for its
    answer: a backend that has not answered for longer than its average is slower than its average says, which
    is known before its slow answer arrives (a new replica that is slow, or one that just stalled). Backends with
    no sample yet are assumed as fast as the best known one.

    Args:
        decay_s: time constant of the average.
        choices: backends compared per pick (0: all).
    """

    name = "peak_ewma"

    def __init__(self, *, decay_s: float = 10.0, choices: int = 2, seed: int | None = None) -> None:
        super().__init__(choices=choices, seed=seed)
        if not decay_s > 0:
            raise ValueError(f"decay_s must be > 0, got {decay_s!r}")
        self.decay_s = decay_s
        self.waiting: dict[str, deque[float]] = {}

    def update(self, members: Sequence[Backend]) -> None:
        """Forget removed backends' requests."""
        names = {b.name for b in members}
        for gone in [n for n in self.waiting if n not in names]:
            del self.waiting[gone]

    def expected_s(self, b: Backend, now: float, default_s: float) -> float:
        """The latency to expect from ``b`` now."""
        est = b.latency_estimate(now, decay_s=self.decay_s) or default_s
        waiting = self.waiting.get(b.name)
        return max(est, now - waiting[0]) if waiting else est

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The cheapest of the drawn backends."""
        drawn = self.drawn(backends)
        known = [e for b in drawn if (e := b.latency_estimate(now, decay_s=self.decay_s)) > 0]
        default = min(known) if known else 1.0

        def cost(b: Backend) -> float:
            return self.expected_s(b, now, default) * (b.in_flight + 1) / b.effective_weight(now)

        chosen = weighted_min(drawn, cost, self.rng)
        req.picked_at = now
        self.waiting.setdefault(chosen.name, deque()).append(now)
        return chosen

    def on_done(self, backend: Backend, req: RequestInfo, *, ok: bool, latency_s: float, now: float) -> None:
        """Fold the latency in; a failure counts as a slow response so an erroring backend loses traffic too."""
        waiting = self.waiting.get(backend.name)
        if waiting:
            try:
                waiting.remove(req.picked_at)
            except ValueError:  # not booked by this policy's pick: one request fewer all the same
                waiting.popleft()
        if not ok:
            latency_s = max(latency_s, 2.0 * backend.latency_estimate(now, decay_s=self.decay_s), 1.0)
        backend.observe_latency(latency_s, now, decay_s=self.decay_s)


@register
class LoadAwareBalancer(_Sampled):
    """Weights from what backends report: their engine queue, running requests and KV-cache use.

    cost = (max(in flight here, running there) + 1 + queue_weight x waiting) x (1 + kv_weight x KV use) / weight.
    Reports come from each backend's vLLM-style ``/metrics`` (``vllm:num_requests_waiting``,
    ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``), polled by the supervisor with the health checks;
    reports older than ``max_age_s`` are ignored. Without reports it behaves like least request.

    Args:
        queue_weight: cost of one request waiting in the engine, relative to one running.
        kv_weight: how much a full KV cache raises the cost.
        max_age_s: ignore older reports.
        choices: backends compared per pick (0: all).
    """

    name = "load_aware"

    def __init__(self, *, queue_weight: float = 2.0, kv_weight: float = 1.0, max_age_s: float = 10.0,
                 choices: int = 0, seed: int | None = None) -> None:
        super().__init__(choices=choices, seed=seed)
        if queue_weight < 0 or kv_weight < 0 or max_age_s <= 0:
            raise ValueError("queue_weight and kv_weight must be >= 0 and max_age_s > 0")
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight
        self.max_age_s = max_age_s

    def cost(self, b: Backend, now: float) -> float:
        """The backend's cost at ``now``."""
        load = b.load
        if load is None or now - load.at > self.max_age_s:
            busy = float(b.in_flight)
            waiting = kv = 0.0
        else:
            busy, waiting, kv = max(float(b.in_flight), load.running), load.waiting, load.kv_cache_usage
        return (busy + 1 + self.queue_weight * waiting) * (1 + self.kv_weight * kv) / b.effective_weight(now)

    def pick(self, req: RequestInfo, backends: Sequence[Backend], now: float) -> Backend:
        """The cheapest of the drawn backends."""
        return self.least(backends, lambda b: self.cost(b, now))
