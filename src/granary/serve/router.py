"""What both HTTP paths of a worker share: routes, admission, the choice of a backend, and the bookkeeping of tries.

The lean path (``granary.serve.lean``: asyncio protocols and httptools) and the aiohttp path
(``granary.serve.proxy``) subclass :class:`Router` and add only their own reading and writing.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from granary.serve.admission import WaitRoom
from granary.serve.backend import Backend
from granary.serve.balancers import RequestInfo
from granary.serve.balancers.prefix import prompt_of
from granary.serve.balancers.shared import SharedRouteState
from granary.serve.budget import retry_is_safe
from granary.serve.config import GatewayConfig, RouteConfig
from granary.serve.forward import Relay, TryFailed
from granary.serve.metrics import AccessLog, GatewayMetrics
from granary.serve.outlier import Outcome
from granary.serve.pool import RoutePool

log = logging.getLogger(__name__)

OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
clock = time.monotonic


class HeaderView(Protocol):
    """Case-insensitive header lookup."""

    def get(self, name: str, default: str | None = None) -> str | None: ...


class RequestView(Protocol):
    """What the router reads of a client request (aiohttp's request and the lean ``Incoming`` both have it)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def headers(self) -> Any: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...

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


class Router:
    """Routes requests and keeps the books of their tries for one worker process (subclasses do the I/O).

    Args:
        config: the gateway configuration.
        metrics: where to record metrics.
        access_log: the JSON access log, or None.
        seed: seed of the policies' random choices (tests).
        shared_dir: folder of the state files the workers share (None: this process is the only worker).
        worker_index: this worker's number, in [0, num_workers).
        num_workers: worker processes of the gateway.
    """

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics, access_log: AccessLog | None = None,
                 seed: int | None = None, shared_dir: str | None = None, worker_index: int = 0,
                 num_workers: int = 1) -> None:
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
        self.ids = itertools.count(1)
        self.prefix_id = f"{os.getpid():x}"
        self.shared: list[SharedRouteState] = []
        for pool in self.pools.values():
            for b in pool.members.values():
                metrics.set_healthy(pool.route.name, b.name, True)
            if pool.balancer.shares_state:
                state = (SharedRouteState.in_memory() if shared_dir is None else SharedRouteState.open(
                    os.path.join(shared_dir, f"route-{pool.route.name}.state"), worker=worker_index,
                    num_workers=num_workers))
                pool.balancer.attach(state)
                self.shared.append(state)

    async def read_body(self, request: Any) -> bytes:
        """The request's whole body (refused with 413 or 408 as the path can tell)."""
        raise NotImplementedError

    # -- what each HTTP path implements -----------------------------------------------------------------
    def prepare(self, request: Any, body: bytes, request_id: str) -> Any:
        """What every try of the request sends (headers, head bytes), built once."""
        raise NotImplementedError

    async def send_try(self, pool: RoutePool, backend: Backend, request: Any, body: bytes, prepared: Any) -> Any:
        """Send the request to ``backend`` and return once its response head is in; failures raise TryFailed."""
        raise NotImplementedError

    def status_of(self, resp: Any) -> int:
        """The HTTP status of a response from :meth:`send_try`."""
        raise NotImplementedError

    def discard(self, resp: Any) -> None:
        """Give back the connection of a response read whole, or of one not relayed (a retried 5xx)."""
        raise NotImplementedError

    def abort(self, resp: Any) -> None:
        """Reset the connection of a response whose relay broke off."""
        raise NotImplementedError

    async def respond(self, request: Any, pool: RoutePool, backend: Backend, resp: Any, info: RequestInfo,
                      request_id: str, t0: float, sent: float, attempt: int) -> Any:
        """Relay the chosen backend's response to the client and record the outcome."""
        raise NotImplementedError

    async def forward(self, request: Any, pool: RoutePool, body: bytes, info: RequestInfo, request_id: str,
                      t0: float) -> Any:
        """Try backends until one answers (retrying only when safe and within the budget), then relay."""
        route = pool.route
        name = route.name
        prepared = self.prepare(request, body, request_id)
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
                resp = await self.send_try(pool, backend, request, body, prepared)
            except TryFailed as f:
                self._finished(pool, backend, info, f.outcome, clock() - sent)
                failure, fail_outcome = f"{backend.name}: {f.reason}", f.outcome
                continue
            except BaseException:
                self._finished(pool, backend, info, "ok", clock() - sent)
                raise
            status = self.status_of(resp)
            if status >= 500 and attempt + 1 < route.retry.attempts and retry_is_safe(
                    method=request.method, got_response_bytes=True, status=status,
                    retry_statuses=route.retry.retry_statuses):
                self.discard(resp)
                self._finished(pool, backend, info, "5xx", clock() - sent)
                failure, fail_outcome = f"{backend.name}: answered {status}", "5xx"
                continue
            return await self.respond(request, pool, backend, resp, info, request_id, t0, sent, attempt)
        timeout = fail_outcome == "timeout"
        raise Reject(504 if timeout else 502, "upstream_timeout" if timeout else "upstream_error",
                     f"no backend of route {name} answered after {len(tried)} tries; last: {failure}", route=name)

    def models_payload(self) -> dict[str, Any]:
        """``GET /v1/models``: every model any route serves."""
        data = [{"id": m, "object": "model", "owned_by": r.name, "created": 0} for m, r in self.by_model.items()]
        return {"object": "list", "data": data}

    def rejected(self, request: RequestView, rej: Reject, request_id: str, t0: float) -> dict[str, Any]:
        """Count and log a request the gateway answers itself; returns the OpenAI-style error body."""
        self.metrics.reject(rej.route, rej.reason)
        self.metrics.request(rej.route, "none", rej.status, clock() - t0)
        self._log(request, request_id, rej.route, "", rej.status, t0, error=rej.reason)
        err_type = "invalid_request_error" if rej.status < 500 and rej.status != 429 else "server_error"
        return {"error": {"message": rej.message, "type": err_type, "code": rej.reason}}

    async def resolve(self, request: RequestView) -> tuple[RouteConfig, bytes, RequestInfo]:
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

    # -- admission and forwarding -------------------------------------------------------------------------
    async def admitted(self, request: RequestView, route: RouteConfig, body: bytes, info: RequestInfo,
                       request_id: str, t0: float) -> Any:
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

    def first_byte(self, pool: RoutePool, backend: Backend, info: RequestInfo) -> None:
        """The response's first body bytes reach the client: the backend is done with the prompt."""
        pool.balancer.on_first_byte(backend, info, clock())

    def settle(self, request: RequestView, pool: RoutePool, backend: Backend, info: RequestInfo, resp: Any, *,
               outcome: Outcome, relay: Relay, recorded: bool, request_id: str, t0: float, sent: float,
               attempt: int) -> None:
        """A relayed response ended: free its connection (reset if the relay broke off), book the backend's
        outcome and, unless ``recorded`` is False, the request."""
        if relay.client_gone or relay.broken:
            self.abort(resp)
        else:
            self.discard(resp)
        status = self.status_of(resp)
        latency = relay.first_chunk_s if relay.first_chunk_s is not None else clock() - sent
        self._finished(pool, backend, info, outcome, latency)
        if recorded:
            self._record(request, pool.route.name, backend.name, status, relay, request_id, t0, sent, attempt)

    def _record(self, request: RequestView, route: str, backend: str, status: int, relay: Relay,
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

    def _log(self, request: RequestView, request_id: str, route: str, backend: str, status: int, t0: float,
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


def _key(request: RequestView, parsed: Any, body: bytes, source: tuple[str, str]) -> str | None:
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
