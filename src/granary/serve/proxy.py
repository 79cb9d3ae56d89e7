"""The request handler of a worker: parse, route, admit, pick a backend, forward with safe retries, relay, record."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from granary.serve.admission import WaitRoom
from granary.serve.backend import Backend
from granary.serve.balancers import RequestInfo
from granary.serve.balancers.prefix import prompt_of
from granary.serve.budget import retry_is_safe
from granary.serve.config import GatewayConfig, RouteConfig
from granary.serve.forward import (
    SMALL_BODY_BYTES,
    ClientGone,
    Relay,
    TryFailed,
    relay_small,
    relay_stream,
    send,
    upstream_headers,
)
from granary.serve.metrics import AccessLog, GatewayMetrics
from granary.serve.outlier import Outcome
from granary.serve.pool import RoutePool

log = logging.getLogger(__name__)

OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
clock = time.monotonic


class Reject(Exception):
    """The gateway answers the request itself with an error."""

    def __init__(self, status: int, reason: str, message: str, *, route: str = "none",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.route = route
        self.headers = dict(headers or {})


class Proxy:
    """Routes and forwards requests for one worker process.

    Args:
        config: the gateway configuration.
        metrics: where to record metrics.
        access_log: the JSON access log, or None.
        seed: seed of the policies' random choices (tests).
    """

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics, access_log: AccessLog | None = None,
                 seed: int | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.access_log = access_log
        now = clock()
        self.pools = {r.name: RoutePool(r, now=now, seed=seed) for r in config.routes}
        self.by_model = {m: r for r in config.routes for m in r.models}
        self.prefixes = sorted(((r.path_prefix, r) for r in config.routes if r.path_prefix),
                               key=lambda p: -len(p[0]))
        adm = config.admission
        self.admission = WaitRoom(adm.max_in_flight, max_waiting=adm.max_queue, timeout_s=adm.queue_timeout_s)
        self.pending = {r.name: WaitRoom(None, max_waiting=r.circuit.max_pending,
                                         timeout_s=r.circuit.pending_timeout_s) for r in config.routes}
        self.session: aiohttp.ClientSession | None = None
        self.ids = itertools.count(1)
        self.prefix_id = f"{os.getpid():x}"
        for pool in self.pools.values():
            for b in pool.members.values():
                metrics.set_healthy(pool.route.name, b.name, True)

    async def start(self) -> None:
        """Open the connection pool to the backends (keep-alive, no cookie jar, bytes passed as they are)."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30.0)
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             auto_decompress=False,
                                             skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))

    async def close(self) -> None:
        """Close the connection pool."""
        if self.session is not None:
            await self.session.close()

    # -- entry point ------------------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one client request."""
        t0 = clock()
        path = request.path
        if path == "/v1/models" and request.method == "GET":
            return self.models_response()
        if path == "/_granary/health":
            return web.json_response({"status": "ok", "pid": os.getpid()})
        request_id = request.headers.get("X-Request-Id") or f"{self.prefix_id}-{next(self.ids)}"
        route = "none"
        try:
            route_cfg, body, info = await self.resolve(request)
            route = route_cfg.name
            return await self.admitted(request, route_cfg, body, info, request_id, t0)
        except Reject as rej:
            if rej.route == "none":
                rej.route = route
            return self.reject(request, rej, request_id, t0)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # a bug must not take the worker down: log it, count it, answer 500
            log.exception("internal error on %s %s", request.method, path)
            return self.reject(request, Reject(500, "internal_error", "internal gateway error (see its log)",
                                               route=route), request_id, t0)

    def models_response(self) -> web.Response:
        """``GET /v1/models``: every model any route serves."""
        data = [{"id": m, "object": "model", "owned_by": r.name, "created": 0} for m, r in self.by_model.items()]
        return web.json_response({"object": "list", "data": data})

    def reject(self, request: web.BaseRequest, rej: Reject, request_id: str, t0: float) -> web.Response:
        """Answer with an OpenAI-style error and count it."""
        self.metrics.reject(rej.route, rej.reason)
        self.metrics.request(rej.route, "none", rej.status, clock() - t0)
        self._log(request, request_id, rej.route, "", rej.status, t0, error=rej.reason)
        err_type = "invalid_request_error" if rej.status < 500 and rej.status != 429 else "server_error"
        return web.json_response({"error": {"message": rej.message, "type": err_type, "code": rej.reason}},
                                 status=rej.status, headers=rej.headers)

    # -- routing ----------------------------------------------------------------------------------------
    async def resolve(self, request: web.BaseRequest) -> tuple[RouteConfig, bytes, RequestInfo]:
        """The route, the request body and the facts the route's policy needs."""
        body = await self.read_body(request)
        path = request.path
        parsed: Any = None
        route: RouteConfig | None = None
        if path in OPENAI_PATHS and request.method == "POST":
            parsed = _parse_json(body)
            model = parsed.get("model")
            if not isinstance(model, str) or not model:
                raise Reject(400, "bad_request", "the request body needs a 'model' string")
            route = self.by_model.get(model)
            if route is None:
                route = self.prefix_route(path)
                if route is None:
                    known = ", ".join(sorted(self.by_model)) or "none"
                    raise Reject(404, "unknown_model", f"the model {model!r} is not served here; known models: "
                                                       f"{known}")
        else:
            route = self.prefix_route(path)
            if route is None:
                raise Reject(404, "no_route", f"no route serves {request.method} {path}")
        info = RequestInfo(client_ip=request.remote or "", method=request.method, path=path)
        balancer = self.pools[route.name].balancer
        if balancer.needs_prompt and parsed is not None:
            info.prompt, info.key = prompt_of(parsed)
        if balancer.key_source is not None:
            info.key = _key(request, parsed, body, balancer.key_source)
        return route, body, info

    def prefix_route(self, path: str) -> RouteConfig | None:
        """The route with the longest path prefix of ``path``."""
        for prefix, route in self.prefixes:
            if path.startswith(prefix):
                return route
        return None

    async def read_body(self, request: web.BaseRequest) -> bytes:
        """The whole request body, refused with 413 past ``max_body_bytes`` and with 408 when the client stalls."""
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise Reject(413, "body_too_large", f"the request body has {length} bytes; the limit is {limit}")
        if not request.body_exists:
            return b""
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                async with asyncio.timeout(self.config.client_idle_s):
                    chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise Reject(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")
                parts.append(chunk)
        except TimeoutError as exc:
            idle = self.config.client_idle_s
            raise Reject(408, "client_gone", f"the client sent no body bytes for {idle:g} s") from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- admission and forwarding -------------------------------------------------------------------------
    async def admitted(self, request: web.BaseRequest, route: RouteConfig, body: bytes, info: RequestInfo,
                       request_id: str, t0: float) -> web.StreamResponse:
        """Wait for admission (bounded), then forward."""
        room = self.admission
        if not room.try_enter():
            self.metrics.queued(route.name, 1)
            try:
                verdict = await room.enter()
            finally:
                self.metrics.queued(route.name, -1)
            if verdict == "full":
                raise Reject(429, "queue_full", "the gateway is at capacity and its queue is full; retry later",
                             route=route.name, headers={"Retry-After": "1"})
            if verdict == "timeout":
                raise Reject(503, "queue_timeout", f"no capacity within {room.timeout_s:g} s; retry later",
                             route=route.name, headers={"Retry-After": "1"})
        try:
            return await self.forward(request, self.pools[route.name], body, info, request_id, t0)
        finally:
            room.leave()

    async def acquire(self, pool: RoutePool, info: RequestInfo, tried: list[Backend]) -> Backend:
        """A backend with room for the request, waiting (bounded) while every usable one is full."""
        room = self.pending[pool.route.name]
        name = pool.route.name
        while True:
            backend, usable = pool.choose(info, clock(), tried)
            if backend is None and not usable and tried:
                backend, usable = pool.choose(info, clock())  # every other backend is out: the same one again
            if backend is not None:
                return backend
            if not usable:
                raise Reject(503, "no_backend", f"route {name} has no backend that can take requests "
                                                "(all unhealthy, ejected or draining)", route=name)
            self.metrics.queued(name, 1)
            try:
                verdict = await room.enter()
            finally:
                self.metrics.queued(name, -1)
            if verdict != "ok":
                raise Reject(503, "circuit_open", f"every backend of route {name} is at its concurrency limit "
                                                  f"({pool.route.circuit.max_concurrent}); retry later",
                             route=name, headers={"Retry-After": "1"})

    async def forward(self, request: web.BaseRequest, pool: RoutePool, body: bytes, info: RequestInfo,
                      request_id: str, t0: float) -> web.StreamResponse:
        """Try backends until one answers (retrying only when safe and within the budget), then relay."""
        assert self.session is not None, "Proxy.start() was not awaited"
        route = pool.route
        name = route.name
        headers = upstream_headers(request, request_id)
        path_qs = request.raw_path
        pool.budget.record_request(clock())
        tried: list[Backend] = []
        failure = "no try was made"
        fail_outcome: Outcome = "connect"
        for attempt in range(route.retry.attempts):
            if attempt and not pool.budget.try_spend(clock()):
                failure += " (retry budget exhausted)"
                break
            backend = await self.acquire(pool, info, tried)
            if attempt:
                self.metrics.retried(name, tried[-1].name)
            tried.append(backend)
            self._started(pool, backend)
            sent = clock()
            try:
                resp = await send(self.session, request.method, backend.url + path_qs, headers=headers, body=body,
                                  connect_s=route.timeouts.connect_s, first_byte_s=route.timeouts.first_byte_s)
            except TryFailed as f:
                self._finished(pool, backend, info, f.outcome, clock() - sent)
                failure, fail_outcome = f"{backend.name}: {f.reason}", f.outcome
                continue
            except BaseException:
                self._finished(pool, backend, info, "ok", clock() - sent)
                raise
            if resp.status >= 500 and attempt + 1 < route.retry.attempts and retry_is_safe(
                    method=request.method, got_response_bytes=True, status=resp.status,
                    retry_statuses=route.retry.retry_statuses):
                resp.release()
                self._finished(pool, backend, info, "5xx", clock() - sent)
                failure, fail_outcome = f"{backend.name}: answered {resp.status}", "5xx"
                continue
            return await self.respond(request, pool, backend, resp, info, request_id, t0, sent, attempt)
        timeout = fail_outcome == "timeout"
        raise Reject(504 if timeout else 502, "upstream_timeout" if timeout else "upstream_error",
                     f"no backend of route {name} answered after {len(tried)} tries; last: {failure}", route=name)

    async def respond(self, request: web.BaseRequest, pool: RoutePool, backend: Backend, resp: Any,
                      info: RequestInfo, request_id: str, t0: float, sent: float, attempt: int
                      ) -> web.StreamResponse:
        """Relay the chosen backend's response and record the outcome."""
        route = pool.route
        outcome: Outcome = "5xx" if resp.status >= 500 else "ok"
        relay = Relay()
        out: web.StreamResponse | None = None
        recorded = True
        try:
            length = resp.content_length
            if length is not None and length <= SMALL_BODY_BYTES \
                    and not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                try:
                    out, relay = await relay_small(request, resp, route.timeouts.idle_s)
                except TryFailed as f:
                    outcome, relay.broken, recorded = f.outcome, True, False
                    raise Reject(502, "upstream_error", f"backend {backend.name}: {f.reason}",
                                 route=route.name) from f
            else:
                try:
                    out, relay = await relay_stream(request, resp, idle_s=route.timeouts.idle_s, started=sent,
                                                    cut_at=pool.cut_deadline(backend), backend_name=backend.name)
                except ClientGone as gone:
                    relay = gone.info
                if relay.broken:
                    outcome = relay.outcome
        except asyncio.CancelledError:
            relay.client_gone = True
            raise
        finally:
            if relay.client_gone or relay.broken:
                resp.close()
            else:
                resp.release()
            latency = relay.first_chunk_s if relay.first_chunk_s is not None else clock() - sent
            self._finished(pool, backend, info, outcome, latency)
            if recorded:
                self._record(request, route.name, backend.name, resp.status, relay, request_id, t0, sent, attempt)
        return out if out is not None else web.Response(status=499)

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _started(self, pool: RoutePool, backend: Backend) -> None:
        pool.started(backend)
        self.metrics.flight(pool.route.name, backend.name, 1)

    def _finished(self, pool: RoutePool, backend: Backend, info: RequestInfo, outcome: Outcome,
                  latency_s: float) -> None:
        name = pool.route.name
        self.metrics.flight(name, backend.name, -1)
        if pool.finished(backend, info, outcome, latency_s, clock()):
            self.metrics.ejected(name, backend.name)
            self.metrics.set_healthy(name, backend.name, False)
            self.pending[name].wake_all()
        else:
            self.pending[name].wake_one()

    def _record(self, request: web.BaseRequest, route: str, backend: str, status: int, relay: Relay,
                request_id: str, t0: float, sent: float, attempt: int) -> None:
        now = clock()
        code = 499 if relay.client_gone else status
        m = self.metrics
        m.request(route, backend, code, now - t0)
        if (relay.first_chunk_s is not None and relay.chunks > 1) or relay.gaps:
            m.stream_first(route, backend, (sent - t0) + (relay.first_chunk_s or 0.0))
            for gap in relay.gaps:
                m.stream_gap(route, backend, gap)
        if relay.client_gone:
            m.reject(route, "client_gone")
        elif relay.broken:
            m.reject(route, "stream_broken")
        if self.access_log is not None:
            self._log(request, request_id, route, backend, code, t0, attempts=attempt + 1, bytes=relay.bytes_out,
                      ttft_ms=None if relay.first_chunk_s is None
                      else round((sent - t0 + relay.first_chunk_s) * 1e3, 3),
                      error="client_gone" if relay.client_gone else "stream_broken" if relay.broken else None)

    def _log(self, request: web.BaseRequest, request_id: str, route: str, backend: str, status: int, t0: float,
             **extra: Any) -> None:
        if self.access_log is None:
            return
        self.access_log.write(id=request_id, client=request.remote, method=request.method, path=request.path,
                              route=route, backend=backend, status=status,
                              duration_ms=round((clock() - t0) * 1e3, 3), **extra)


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Reject(400, "bad_json", f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise Reject(400, "bad_json", f"the request body must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _key(request: web.BaseRequest, parsed: Any, body: bytes, source: tuple[str, str]) -> str | None:
    kind, name = source
    if kind == "ip":
        return request.remote or ""
    if kind == "header":
        return request.headers.get(name)
    if kind == "cookie":
        return request.cookies.get(name)
    if parsed is None and body:
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
    value = parsed.get(name) if isinstance(parsed, dict) else None
    return None if value is None else str(value)
