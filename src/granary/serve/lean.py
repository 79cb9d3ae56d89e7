"""The lean path of a worker (the default, ``server: lean``): httptools-parsed asyncio protocols on both sides.

Per request it allocates the parsed request, one task, the upstream request head as one ``bytes`` and the
response head as another; connections to backends are pooled and kept alive. Features are those of the
aiohttp path (routes, policies, admission, circuit breaking, safe retries with a budget, outlier ejection,
drains, SSE relayed whole events at a time with a clean error event when a backend dies, idle timeouts,
metrics and the access log), with the same routing code (:class:`granary.serve.router.Router`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from granary.serve.backend import Backend
from granary.serve.balancers import RequestInfo
from granary.serve.config import GatewayConfig
from granary.serve.forward import (
    SMALL_BODY_BYTES,
    Relay,
    TryFailed,
    _event_end,
    _events,
    complete_events,
    sse_error_event,
)
from granary.serve.httpserver import ClientConnection, Incoming
from granary.serve.metrics import AccessLog, GatewayMetrics
from granary.serve.outlier import Outcome
from granary.serve.pool import RoutePool
from granary.serve.router import Reject, Router, clock
from granary.serve.upstream import HOP_BY_HOP, StaleConnection, Target, UpstreamConnection, UpstreamPool, build_head

log = logging.getLogger(__name__)

JSON = ((b"Content-Type", b"application/json; charset=utf-8"),)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class LeanProxy(Router):
    """Routes and forwards requests for one worker process over the lean HTTP path.

    Args:
        config: the gateway configuration.
        metrics: where to record metrics.
        access_log: the JSON access log, or None.
        kw: the keyword arguments of :class:`Router` (seed, shared_dir, worker_index, num_workers).
    """

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics, access_log: AccessLog | None = None,
                 **kw: Any) -> None:
        super().__init__(config, metrics=metrics, access_log=access_log, **kw)
        self.upstream = UpstreamPool()
        self.targets: dict[str, Target] = {}

    async def start(self) -> None:
        """Nothing to open: upstream connections are made on first use."""

    async def close(self) -> None:
        """Close the idle upstream connections."""
        self.upstream.close()

    # -- entry point ------------------------------------------------------------------------------------
    async def handle(self, req: Incoming, out: ClientConnection) -> None:
        """Answer one client request through ``out``."""
        t0 = clock()
        if req.reject is not None:
            status, reason, message = req.reject
            self.answer_reject(req, out, Reject(status, reason, message), "-", t0)
            return
        path = req.path
        if path == "/v1/models" and req.method == "GET":
            out.send_response(200, JSON, _dumps(self.models_payload()).encode(), req)
            return
        if path == "/_granary/health":
            out.send_response(200, JSON, _dumps({"status": "ok", "pid": os.getpid()}).encode(), req)
            return
        request_id = req.headers.get("x-request-id") or f"{self.prefix_id}-{next(self.ids)}"
        route = "none"
        try:
            route_cfg, body, info = await self.resolve(req)
            route = route_cfg.name
            await self.admitted(req, route_cfg, body, info, request_id, t0)
        except Reject as rej:
            if rej.route == "none":
                rej.route = route
            self.answer_reject(req, out, rej, request_id, t0)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # a bug must not take the worker down: log it, count it, answer 500
            log.exception("internal error on %s %s", req.method, path)
            self.answer_reject(req, out, Reject(500, "internal_error", "internal gateway error (see its log)",
                                                route=route), request_id, t0)
        finally:
            if self.metrics.dirty and not self.admission.used:  # idle: metrics become visible now
                self.metrics.flush()

    def answer_reject(self, req: Incoming, out: ClientConnection, rej: Reject, request_id: str, t0: float) -> None:
        """Answer with an OpenAI-style error and count it."""
        body = _dumps(self.rejected(req, rej, request_id, t0)).encode()
        headers = [*JSON, *((k.encode(), v.encode()) for k, v in rej.headers.items())]
        out.send_response(rej.status, headers, body, req)

    async def read_body(self, request: Incoming) -> bytes:
        """The body the connection read already (it enforced the size and idle limits)."""
        return request.body

    def target(self, backend: Backend) -> Target:
        """Where ``backend`` lives (parsed once per URL)."""
        t = self.targets.get(backend.url)
        if t is None:
            t = self.targets[backend.url] = Target.of(backend.url)
        return t

    # -- forwarding -------------------------------------------------------------------------------------
    def prepare(self, request: Incoming, body: bytes, request_id: str) -> bytes:
        """The header lines the gateway adds to every try (X-Forwarded-For, X-Request-Id)."""
        peer = request.remote
        prior = request.headers.get("x-forwarded-for")
        extra = (f"X-Forwarded-For: {prior}, {peer}\r\n" if prior else f"X-Forwarded-For: {peer}\r\n").encode(
            "latin-1") + b"X-Request-Id: " + request_id.encode("latin-1") + b"\r\n"
        return extra

    async def send_try(self, pool: RoutePool, backend: Backend, request: Incoming, body: bytes,
                       prepared: bytes) -> UpstreamConnection:
        """Send the request on a pooled connection and wait for the response head; failures raise TryFailed."""
        timeouts = pool.route.timeouts
        target = self.target(backend)
        data = build_head(request.method, target, request.raw_path, request.headers.raw, prepared, len(body)) + body
        upstream = self.upstream
        for _ in range(2):  # a reused connection the backend closed meanwhile is replaced once
            conn = upstream.idle_connection(target) or await upstream.acquire(target, timeouts.connect_s)
            conn.send(data, head_only=request.method == "HEAD")
            try:
                while not conn.head_done:
                    await conn.wait(timeouts.first_byte_s, "no response within {:g} s")
                return conn
            except StaleConnection:
                continue
            except TimeoutError as exc:
                conn.abort()
                raise TryFailed("timeout", f"no response within {timeouts.first_byte_s:g} s") from exc
            except OSError as exc:
                conn.abort()
                raise TryFailed("reset", f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                conn.abort()
                raise
        raise TryFailed("reset", "the backend closed two connections before answering")

    def status_of(self, resp: UpstreamConnection) -> int:
        """The response's status."""
        return resp.status

    def discard(self, resp: UpstreamConnection) -> None:
        """Give the connection back (closed unless its response was read whole)."""
        self.upstream.release(resp)

    def abort(self, resp: UpstreamConnection) -> None:
        """Reset the connection (the backend stops working on the request)."""
        resp.abort()

    async def respond(self, request: Incoming, pool: RoutePool, backend: Backend, conn: UpstreamConnection,
                      info: RequestInfo, request_id: str, t0: float, sent: float, attempt: int) -> None:
        """Relay the chosen backend's response and record the outcome."""
        route = pool.route
        out = request.conn
        assert out is not None, "the request has no connection to answer on"
        outcome: Outcome = "5xx" if conn.status >= 500 else "ok"
        headers, length, sse = _downstream(conn.headers)
        relay = Relay()
        recorded = True
        try:
            if request.method == "HEAD":  # the head only, with the length a GET would have
                out.start_stream(conn.status, headers, request, length or 0)
            elif not sse and (conn.done or (length is not None and length <= SMALL_BODY_BYTES)):
                try:
                    data = conn.take() if conn.done else await conn.read_all(route.timeouts.idle_s)
                except (TimeoutError, OSError) as exc:
                    outcome = "timeout" if isinstance(exc, TimeoutError) else "reset"
                    relay.broken, recorded = True, False
                    raise Reject(502, "upstream_error", f"backend {backend.name}: body cut ({exc})",
                                 route=route.name) from exc
                self.first_byte(pool, backend, info)
                out.send_response(conn.status, headers, data, request)
                relay.bytes_out, relay.chunks = len(data), 1
            else:
                relay = await relay_lean(out, request, conn, headers, sse=sse, length=None if sse else length,
                                         idle_s=route.timeouts.idle_s, started=sent,
                                         cut_at=pool.cut_deadline(backend), backend_name=backend.name,
                                         on_first=lambda: self.first_byte(pool, backend, info))
                if relay.broken:
                    outcome = relay.outcome
        except asyncio.CancelledError:
            relay.client_gone = True
            raise
        finally:
            self.settle(request, pool, backend, info, conn, outcome=outcome, relay=relay, recorded=recorded,
                        request_id=request_id, t0=t0, sent=sent, attempt=attempt)


def _downstream(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """The backend's headers minus hop-by-hop ones, its Content-Length, and whether it is an event stream."""
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    sse = False
    for k, v in raw:
        low = k.lower()
        if low == b"content-length":
            length = int(v) if v.isdigit() else None
        elif low == b"content-type":
            sse = v.startswith(b"text/event-stream")
            headers.append((k, v))
        elif low not in HOP_BY_HOP:
            headers.append((k, v))
    return headers, length, sse


async def relay_lean(out: ClientConnection, req: Incoming, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]],
                     *, sse: bool, length: int | None, idle_s: float, started: float, cut_at: float,
                     backend_name: str, on_first: Callable[[], None] | None = None) -> Relay:
    """Pass the body on as it comes; each read and each write may stay idle at most ``idle_s``.

    SSE is passed on whole events at a time, so that when the backend dies mid-stream the client gets a clean
    error event (never half an event, never a hang). Other bodies that break are cut, so the client sees a
    truncated response rather than waiting.
    """
    info = Relay(on_first=on_first)
    out.start_stream(conn.status, headers, req, length)
    pending = bytearray()
    while True:
        try:
            chunk = await conn.read(idle_s)
        except TimeoutError:
            info.outcome, info.broken = "timeout", True
            await _fail(out, sse, f"backend {backend_name} sent nothing for {idle_s:g} s")
            return info
        except OSError as exc:
            info.outcome, info.broken = "reset", True
            end = _event_end(pending) if sse else 0
            if end and await out.write(bytes(pending[:end]), idle_s):  # whole events that came before the cut
                info.bytes_out += end
                info.chunks += _events(pending[:end])
            await _fail(out, sse, f"backend {backend_name} closed the stream after {info.chunks} chunks "
                                  f"({type(exc).__name__})")
            return info
        if not chunk:
            break
        if sse and not (chunk := complete_events(pending, chunk)):
            continue
        now = clock()
        info.tick(now, started)
        if not await out.write(chunk, idle_s):
            info.client_gone = True
            return info
        info.bytes_out += len(chunk)
        info.chunks += _events(chunk) if sse else 1
        if now >= cut_at:
            info.broken = True
            await _fail(out, sse, f"backend {backend_name} was removed from the gateway", code="drained")
            return info
    if pending and not await out.write(bytes(pending), idle_s):
        info.client_gone = True
        return info
    if not out.end_stream():
        info.client_gone = True
    return info


async def _fail(out: ClientConnection, sse: bool, message: str, *, code: str = "upstream_error") -> None:
    """End a broken response: an error event for SSE, a cut connection otherwise."""
    if sse and await out.write(sse_error_event(message, code=code), 5.0) and out.end_stream():
        return
    out.abort()

