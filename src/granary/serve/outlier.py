"""Passive health: eject backends that fail live traffic, with back-off, a cap on ejections, and panic mode."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

from granary.serve.backend import Backend
from granary.serve.config import OutlierConfig

log = logging.getLogger(__name__)

Outcome = Literal["ok", "5xx", "timeout", "connect", "reset"]


class OutlierDetector:
    """Counts consecutive failures per backend and ejects outliers (Envoy's outlier detection, simplified).

    A backend with ``consecutive_failures`` failures in a row (connect errors, resets, timeouts, 5xx answers) is
    ejected for ``base_ejection_s`` x the number of times it was ejected recently, at most ``max_ejection_s``.
    The count of recent ejections drops back to zero once a backend has stayed in for ``max_ejection_s``.
    No ejection happens when it would leave more than ``max_ejected_percent`` of the route's backends out
    (at least one may always be ejected). A backend that returns after an ejection starts a new slow start.

    Args:
        config: the route's outlier settings.
    """

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config

    def record(self, backend: Backend, outcome: Outcome, members: Sequence[Backend], now: float) -> bool:
        """Note one request's outcome; returns True when this outcome ejected the backend."""
        if outcome == "ok":
            backend.consecutive_failures = 0
            return False
        backend.consecutive_failures += 1
        if backend.consecutive_failures < self.config.consecutive_failures or backend.ejected(now):
            return False
        return self.eject(backend, members, now)

    def eject(self, backend: Backend, members: Sequence[Backend], now: float) -> bool:
        """Eject ``backend`` unless the cap on ejected backends is reached; returns whether it was ejected."""
        ejected = sum(1 for b in members if b.ejected(now))
        cap = max(1, math.floor(len(members) * self.config.max_ejected_percent / 100.0))
        if ejected >= cap:
            log.warning("not ejecting %s: %d of %d backends are ejected already (cap %d)", backend.name,
                        ejected, len(members), cap)
            return False
        if now - backend.last_ejected_at > self.config.max_ejection_s + backend_ejection_s(backend, self.config):
            backend.ejections = 0
        backend.ejections += 1
        backend.ejected_until = now + backend_ejection_s(backend, self.config)
        backend.last_ejected_at = now
        backend.consecutive_failures = 0
        log.warning("ejected backend %s for %.1f s (ejection %d)", backend.name, backend.ejected_until - now,
                    backend.ejections)
        return True

    @staticmethod
    def returned(backends: Sequence[Backend], now: float, was_ejected: set[str]) -> list[Backend]:
        """Backends in ``was_ejected`` whose ejection ran out by ``now``; each restarts its slow start."""
        back = [b for b in backends if b.name in was_ejected and not b.ejected(now)]
        for b in back:
            b.added_at = now
        return back


def backend_ejection_s(backend: Backend, config: OutlierConfig) -> float:
    """How long the next (or current) ejection of ``backend`` lasts."""
    return min(config.max_ejection_s, config.base_ejection_s * max(1, backend.ejections))


def available(members: Sequence[Backend], now: float, panic_threshold_percent: float) -> tuple[list[Backend], bool]:
    """The backends to balance over, and whether the route is in panic mode.

    Normally these are the healthy, non-ejected, non-draining ones. When fewer than ``panic_threshold_percent``
    of the non-draining backends are available, health is ignored and traffic goes to all of them (a wrong
    health signal must not turn a partial outage into a total one).
    """
    live = [b for b in members if not b.draining]
    ok = [b for b in live if b.active_healthy and now >= b.ejected_until]
    if live and len(ok) * 100.0 < panic_threshold_percent * len(live):
        return live, True
    return ok, False
