"""ASGI middleware: ETags on GET responses (with 304 on a match) and Prometheus request metrics."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

Scope = dict[str, Any]
Message = dict[str, Any]

REQUESTS = Counter("granary_server_requests_total", "HTTP requests served by granary server",
                   ["method", "route", "status"])
DURATION = Histogram("granary_server_request_duration_seconds", "Time to answer an HTTP request",
                     ["method", "route"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                   5, 10))
MAX_ETAG_BODY = 8 * 1024 * 1024
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def metrics_text() -> bytes:
    """The Prometheus exposition of this server: of this process, or summed over every worker process when they
    share a PROMETHEUS_MULTIPROC_DIR (``granary server --workers N`` sets one)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


class ETagMiddleware:
    """Buffer successful JSON answers to GET requests, tag them with a content hash and answer 304 to a
    request whose ``If-None-Match`` already holds it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        passthrough = False

        async def capture(message: Message) -> None:
            nonlocal start, passthrough
            if passthrough:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                json_ok = message["status"] == 200 and headers.get(b"content-type", b"").startswith(
                    b"application/json")
                if not json_ok:
                    passthrough = True
                    await send(message)
                    return
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                if sum(len(c) for c in chunks) > MAX_ETAG_BODY:  # too big to hash in memory: send as it is
                    passthrough = True
                    assert start is not None
                    await send(start)
                    await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                return
            await self._finish(scope, start, b"".join(chunks), send)

        await self.app(scope, receive, capture)

    @staticmethod
    async def _finish(scope: Scope, start: Message | None, body: bytes, send: Any) -> None:
        assert start is not None
        tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        asked = dict(scope.get("headers") or []).get(b"if-none-match", b"").decode("latin-1")
        headers = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-length", b"etag")]
        headers += [(b"etag", tag.encode()), (b"cache-control", b"private, no-cache")]
        if tag in [t.strip().removeprefix("W/") for t in asked.split(",")]:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def route_name(scope: Scope) -> str:
    """The route template a request matched (with the API prefix), ``/ui`` for the dashboard, else unmatched."""
    path = getattr(scope.get("route"), "path", None)
    if path is None:
        return "/ui" if scope["path"].startswith("/ui") else "unmatched"
    if scope["path"].startswith("/api/v1/") and not path.startswith("/api/v1"):
        path = "/api/v1" + path  # routers included under a prefix report their own path
    return str(path)


class MetricsMiddleware:
    """Count requests and time them per route template (``/api/v1/jobs/{job_id}``, not per job)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            name = route_name(scope)
            REQUESTS.labels(scope["method"], name, str(status)).inc()
            DURATION.labels(scope["method"], name).observe(time.perf_counter() - t0)
