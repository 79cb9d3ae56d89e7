"""Prometheus metrics of the gateway (names fixed by the project's metric contract) and the JSON access log."""

from __future__ import annotations

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

    Label children are cached, so recording a request costs a few dictionary lookups.

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

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child

    def request(self, route: str, backend: str, code: int, duration_s: float) -> None:
        """Count a finished request and its duration."""
        self._child(self.requests, route, backend, str(code)).inc()
        self._child(self.duration, route, backend).observe(duration_s)

    def stream_first(self, route: str, backend: str, ttft_s: float) -> None:
        """A stream's first chunk arrived."""
        self._child(self.ttft, route, backend).observe(ttft_s)

    def stream_gap(self, route: str, backend: str, gap_s: float) -> None:
        """Time between two chunks of a stream."""
        self._child(self.itl, route, backend).observe(gap_s)

    def flight(self, route: str, backend: str, delta: int) -> None:
        """Requests in flight to a backend went up or down."""
        self._child(self.in_flight, route, backend).inc(delta)

    def queued(self, route: str, delta: int) -> None:
        """Requests waiting went up or down."""
        self._child(self.queue_depth, route).inc(delta)

    def set_healthy(self, route: str, backend: str, healthy: bool) -> None:
        """Whether a backend takes traffic in this worker."""
        self._child(self.healthy, route, backend).set(1.0 if healthy else 0.0)

    def forget_backend(self, route: str, backend: str) -> None:
        """A backend left the route: drop its gauges (counters stay, as Prometheus expects)."""
        for metric in (self.healthy, self.in_flight):
            with contextlib.suppress(KeyError):
                metric.remove(route, backend)
            self._cache.pop((id(metric), route, backend), None)

    def ejected(self, route: str, backend: str) -> None:
        """A backend was ejected."""
        self._child(self.ejections, route, backend).inc()

    def retried(self, route: str, backend: str) -> None:
        """A try on ``backend`` failed and was sent again elsewhere."""
        self._child(self.retries, route, backend).inc()

    def reject(self, route: str, reason: str) -> None:
        """The gateway refused or failed a request for ``reason`` (one of REJECT_REASONS)."""
        assert reason in REJECT_REASONS, reason
        self._child(self.rejected, route, reason).inc()


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
