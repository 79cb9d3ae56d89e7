"""Retry budget and retry safety: how many retries a route may add, and which failures may be retried at all."""

from __future__ import annotations

import math

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryBudget:
    """Retries allowed over a sliding window: at most ``ratio`` x requests, plus ``min_per_s`` x window.

    A retry storm cannot multiply the load on a struggling route: with ratio 0.2, retries add at most 20 %
    on top of the requests (Finagle's and Linkerd's retry budget). The window is kept in one-second buckets.

    Args:
        ratio: retries per request allowed.
        min_per_s: retries per second allowed regardless of the request rate (so low-traffic routes can retry).
        window_s: the sliding window.
    """

    def __init__(self, *, ratio: float = 0.2, min_per_s: float = 10.0, window_s: float = 10.0) -> None:
        if ratio < 0 or min_per_s < 0 or window_s <= 0:
            raise ValueError("ratio and min_per_s must be >= 0 and window_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.buckets = max(1, math.ceil(window_s))
        self.requests = [0] * self.buckets
        self.retries = [0] * self.buckets
        self.second = 0

    def _roll(self, now: float) -> None:
        sec = int(now)
        if sec == self.second:
            return
        if sec - self.second >= self.buckets:
            self.requests = [0] * self.buckets
            self.retries = [0] * self.buckets
        else:
            for s in range(self.second + 1, sec + 1):
                self.requests[s % self.buckets] = 0
                self.retries[s % self.buckets] = 0
        self.second = sec

    def record_request(self, now: float) -> None:
        """Count a first try."""
        self._roll(now)
        self.requests[self.second % self.buckets] += 1

    def can_retry(self, now: float) -> bool:
        """Whether one more retry fits in the budget."""
        self._roll(now)
        allowed = self.ratio * sum(self.requests) + self.min_per_s * self.buckets
        return sum(self.retries) + 1 <= allowed

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if there is room; returns whether it was taken."""
        if not self.can_retry(now):
            return False
        self.retries[self.second % self.buckets] += 1
        return True


def retry_is_safe(*, method: str, got_response_bytes: bool, status: int | None,
                  retry_statuses: tuple[int, ...]) -> bool:
    """May a failed try be sent again to another backend?

    Always before the first response byte (the backend answered nothing: connect error, reset, no headers
    within ``first_byte_s``). After an answer, only for idempotent methods and a retryable status, and never
    once a byte was passed on to the client (the caller stops retrying then).
    """
    if not got_response_bytes:
        return True
    return method in IDEMPOTENT_METHODS and status is not None and status in retry_statuses
