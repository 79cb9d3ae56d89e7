"""The live state of one backend inside one worker process: load, health, ejection, slow start, latency."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(kw_only=True, frozen=True)
class LoadReport:
    """What a backend says about its own load (from a vLLM-style ``/metrics``).

    Attributes:
        running: requests being generated.
        waiting: requests queued inside the engine.
        kv_cache_usage: share of the KV cache in use, 0..1.
        at: monotonic time of the report.
    """

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    at: float = 0.0


class Backend:
    """One model server as seen by one worker. Balancers read it; the proxy and the health code write it.

    Args:
        name: unique within its route.
        url: ``http://host:port[/prefix]``.
        weight: configured weight.
        now: monotonic time it was added (the start of its slow start).
        slow_start_s: the slow-start window of its route.
    """

    __slots__ = ("active_healthy", "added_at", "consecutive_failures", "draining", "ejected_until", "ejections",
                 "ewma_at", "ewma_s", "in_flight", "last_ejected_at", "load", "name", "requests", "slow_start_s",
                 "url", "weight")

    def __init__(self, name: str, url: str, weight: float = 1.0, *, now: float = 0.0,
                 slow_start_s: float = 0.0) -> None:
        self.name = name
        self.slow_start_s = slow_start_s
        self.url = url
        self.weight = weight
        self.added_at = now
        self.in_flight = 0
        self.requests = 0
        self.active_healthy = True
        self.draining = False
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.last_ejected_at = -math.inf
        self.ewma_s = 0.0
        self.ewma_at = now
        self.load: LoadReport | None = None

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, weight={self.weight:g}, in_flight={self.in_flight})"

    def ejected(self, now: float) -> bool:
        """Whether passive outlier detection keeps it out of rotation at ``now``."""
        return now < self.ejected_until

    def available(self, now: float) -> bool:
        """Healthy, not ejected and not draining."""
        return self.active_healthy and not self.draining and now >= self.ejected_until

    def slow_start_factor(self, now: float, window_s: float | None = None, *, min_factor: float = 0.1) -> float:
        """Share of its weight a new or returning backend gets: rises linearly from ``min_factor`` to 1."""
        window_s = self.slow_start_s if window_s is None else window_s
        if window_s <= 0:
            return 1.0
        elapsed = now - self.added_at
        if elapsed >= window_s:
            return 1.0
        return max(min_factor, elapsed / window_s)

    def effective_weight(self, now: float) -> float:
        """The weight balancers use: the configured weight times the slow-start factor."""
        if now - self.added_at >= self.slow_start_s:
            return self.weight
        return self.weight * self.slow_start_factor(now)

    # -- latency (peak-EWMA, after Finagle and Linkerd) -----------------------------------------------
    def observe_latency(self, latency_s: float, now: float, *, decay_s: float = 10.0) -> None:
        """Fold a response latency into the peak-sensitive moving average.

        A latency above the average replaces it at once (peaks count immediately); lower ones pull it down
        with a weight that decays with the time since the last observation.
        """
        if latency_s > self.ewma_s:
            self.ewma_s = latency_s
        else:
            w = math.exp(-max(0.0, now - self.ewma_at) / decay_s)
            self.ewma_s = self.ewma_s * w + latency_s * (1.0 - w)
        self.ewma_at = now

    def latency_estimate(self, now: float, *, decay_s: float = 10.0, default_s: float = 0.0) -> float:
        """The EWMA as of ``now``; an idle backend's estimate decays toward ``default_s``."""
        if self.ewma_s == 0.0:
            return default_s
        w = math.exp(-max(0.0, now - self.ewma_at) / decay_s)
        return self.ewma_s * w + default_s * (1.0 - w)

    def snapshot(self, now: float) -> dict[str, object]:
        """A JSON-able view for status pages."""
        return {
            "name": self.name, "url": self.url, "weight": self.weight, "in_flight": self.in_flight,
            "requests": self.requests, "healthy": self.active_healthy, "draining": self.draining,
            "ejected": self.ejected(now), "ejections": self.ejections,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
            "ewma_ms": round(self.ewma_s * 1000, 3),
            "slow_start": round(self.slow_start_factor(now), 3),
            "load": None if self.load is None else {"running": self.load.running, "waiting": self.load.waiting,
                                                    "kv_cache_usage": self.load.kv_cache_usage},
        }
