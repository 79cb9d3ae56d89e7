"""Prometheus metrics of the gateway (names fixed by the project's metric contract) and the JSON access log."""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from granary.errors import MissingDependencyError

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# reason label values of granary_gateway_rejected_total (a fixed set, never free text)
REJECT_REASONS = ("bad_json", "bad_request", "body_too_large", "unknown_model", "no_route", "queue_full",
                  "queue_timeout", "circuit_open", "no_backend", "upstream_error", "upstream_timeout",
                  "client_gone", "stream_broken", "unauthorized", "internal_error")


class GatewayMetrics:
    """The gateway's metrics, registered on ``registry`` (or in multiprocess mode when the environment says so).

    The request path only adds to plain dictionaries (a request costs a few dictionary updates); :meth:`flush`
    moves the sums into the Prometheus metrics. The worker flushes whenever it has no request in flight and
    every housekeeping tick (0.1 s), so a scrape lags a busy worker by at most that much. In multiprocess mode
    each metric update is a locked write into a memory-mapped file; at c=64 the per-request updates took about
    a tenth of a worker's CPU.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; None uses a new private one.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client as pc
        except ImportError as exc:
            raise MissingDependencyError("prometheus-client", "serve") from exc
        if registry is None:
            registry = pc.CollectorRegistry()
        self.registry = registry
        r = {"registry": registry}
        self.requests = pc.Counter("granary_gateway_requests_total", "Requests answered, by route, backend and "
                                   "status code", ["route", "backend", "code"], **r)
        self.duration = pc.Histogram("granary_gateway_request_duration_seconds", "Time from request to the end of "
                                     "the response", ["route", "backend"], buckets=LATENCY_BUCKETS, **r)
        self.ttft = pc.Histogram("granary_gateway_time_to_first_token_seconds", "Streams: time to the first body "
                                 "chunk", ["route", "backend"], buckets=LATENCY_BUCKETS, **r)
        self.itl = pc.Histogram("granary_gateway_inter_token_latency_seconds", "Streams: time between chunks",
                                ["route", "backend"], buckets=TOKEN_BUCKETS, **r)
        self.in_flight = pc.Gauge("granary_gateway_in_flight_requests", "Requests being proxied",
                                  ["route", "backend"], multiprocess_mode="livesum", **r)
        self.queue_depth = pc.Gauge("granary_gateway_queue_depth", "Requests waiting for admission or for a "
                                    "backend with room", ["route"], multiprocess_mode="livesum", **r)
        self.healthy = pc.Gauge("granary_gateway_backend_healthy", "1 when the backend takes traffic in every "
                                "worker", ["route", "backend"], multiprocess_mode="livemin", **r)
        self.ejections = pc.Counter("granary_gateway_backend_ejections_total", "Passive outlier ejections",
                                    ["route", "backend"], **r)
        self.retries = pc.Counter("granary_gateway_retries_total", "Tries sent again to another backend",
                                  ["route", "backend"], **r)
        self.rejected = pc.Counter("granary_gateway_rejected_total", "Requests refused or failed by the gateway, "
                                   "by reason", ["route", "reason"], **r)
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._counts: dict[tuple[Any, ...], int] = {}  # (metric, *labels) -> increments not flushed yet
        self._deltas: dict[tuple[Any, ...], float] = {}  # (gauge, *labels) -> change not flushed yet
        self._hists: dict[tuple[Any, ...], list[float]] = {}  # (histogram, *labels) -> [sum, count per bucket...]
        self._bounds: dict[int, tuple[float, ...]] = {id(self.duration): LATENCY_BUCKETS,
                                                      id(self.ttft): LATENCY_BUCKETS, id(self.itl): TOKEN_BUCKETS}
        self.dirty = False

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def _count(self, metric: Any, *labels: str) -> None:
        key = (metric, *labels)
        self._counts[key] = self._counts.get(key, 0) + 1
        self.dirty = True

    def _observe(self, metric: Any, value: float, *labels: str) -> None:
        key = (metric, *labels)
        h = self._hists.get(key)
        if h is None:
            h = self._hists[key] = [0.0] * (len(self._bounds[id(metric)]) + 2)
        h[0] += value
        h[1 + bisect.bisect_left(self._bounds[id(metric)], value)] += 1  # the first bucket with value <= bound
        self.dirty = True

    def flush(self) -> None:
        """Move what the request path recorded into the Prometheus metrics."""
        self.dirty = False
        counts, self._counts = self._counts, {}
        for (metric, *labels), n in counts.items():
            self._child(metric, *labels).inc(n)
        deltas, self._deltas = self._deltas, {}
        for (metric, *labels), d in deltas.items():
            if d:
                self._child(metric, *labels).inc(d)
        hists, self._hists = self._hists, {}
        for (metric, *labels), h in hists.items():
            child = self._child(metric, *labels)
            # what Histogram.observe does per value, once per bucket (checked by tests/unit/serve/test_metrics.py)
            child._sum.inc(h[0])
            for i, hits in enumerate(h[1:]):
                if hits:
                    child._buckets[i].inc(hits)

    def request(self, route: str, backend: str, code: int, duration_s: float) -> None:
        """Count a finished request and its duration."""
        self._count(self.requests, route, backend, str(code))
        self._observe(self.duration, duration_s, route, backend)

    def stream_first(self, route: str, backend: str, ttft_s: float) -> None:
        """A stream's first chunk arrived."""
        self._observe(self.ttft, ttft_s, route, backend)

    def stream_gap(self, route: str, backend: str, gap_s: float) -> None:
        """Time between two chunks of a stream."""
        self._observe(self.itl, gap_s, route, backend)

    def flight(self, route: str, backend: str, delta: int) -> None:
        """Requests in flight to a backend went up or down."""
        key = (self.in_flight, route, backend)
        self._deltas[key] = self._deltas.get(key, 0.0) + delta
        self.dirty = True

    def queued(self, route: str, delta: int) -> None:
        """Requests waiting went up or down."""
        key = (self.queue_depth, route)
        self._deltas[key] = self._deltas.get(key, 0.0) + delta
        self.dirty = True

    def set_healthy(self, route: str, backend: str, healthy: bool) -> None:
        """Whether a backend takes traffic in this worker."""
        self._child(self.healthy, route, backend).set(1.0 if healthy else 0.0)

    def forget_backend(self, route: str, backend: str) -> None:
        """A backend left the route: drop its gauges (counters stay, as Prometheus expects)."""
        self.flush()
        for metric in (self.healthy, self.in_flight):
            with contextlib.suppress(KeyError):
                metric.remove(route, backend)
            self._cache.pop((id(metric), route, backend), None)

    def ejected(self, route: str, backend: str) -> None:
        """A backend was ejected."""
        self._count(self.ejections, route, backend)

    def retried(self, route: str, backend: str) -> None:
        """A try on ``backend`` failed and was sent again elsewhere."""
        self._count(self.retries, route, backend)

    def reject(self, route: str, reason: str) -> None:
        """The gateway refused or failed a request for ``reason`` (one of REJECT_REASONS)."""
        assert reason in REJECT_REASONS, reason
        self._count(self.rejected, route, reason)


class AccessLog:
    """A JSON-lines access log, buffered and flushed by the caller's timer (one write per flush, not per line).

    Args:
        target: a path, ``-`` for stderr.
    """

    def __init__(self, target: str) -> None:
        self.stream: IO[str] = sys.stderr if target == "-" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        self.owned = target != "-"
        self.buffer: list[str] = []
        self.dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self.pid = os.getpid()

    def write(self, **fields: Any) -> None:
        """Queue one record (``ts`` and ``pid`` are added)."""
        fields["ts"] = round(time.time(), 6)
        fields["pid"] = self.pid
        self.buffer.append(self.dumps(fields))

    def flush(self) -> None:
        """Write the queued records in one call."""
        if self.buffer:
            data = "\n".join(self.buffer) + "\n"
            self.buffer.clear()
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self.owned:
            self.stream.close()
