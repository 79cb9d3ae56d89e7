"""The aiohttp path of a worker (the fallback, ``server: aiohttp``): aiohttp's server and client."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from granary.serve.backend import Backend
from granary.serve.balancers import RequestInfo
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
from granary.serve.outlier import Outcome
from granary.serve.pool import RoutePool
from granary.serve.router import Reject, Router, clock

log = logging.getLogger(__name__)


class Proxy(Router):
    """The aiohttp path of a worker: aiohttp's server and client (``server: aiohttp`` in the config); built with
    :class:`Router`'s arguments."""

    session: aiohttp.ClientSession | None = None

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
        finally:
            if self.metrics.dirty and not self.admission.used:  # idle: metrics become visible now
                self.metrics.flush()

    def models_response(self) -> web.Response:
        """``GET /v1/models``: every model any route serves."""
        return web.json_response(self.models_payload())

    def reject(self, request: web.BaseRequest, rej: Reject, request_id: str, t0: float) -> web.Response:
        """Answer with an OpenAI-style error and count it."""
        return web.json_response(self.rejected(request, rej, request_id, t0), status=rej.status,
                                 headers=rej.headers)

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

    def prepare(self, request: web.BaseRequest, body: bytes, request_id: str) -> CIMultiDict[str]:
        """The headers every try sends."""
        return upstream_headers(request, request_id)

    async def send_try(self, pool: RoutePool, backend: Backend, request: web.BaseRequest, body: bytes,
                       prepared: CIMultiDict[str]) -> Any:
        """One try with aiohttp's client."""
        assert self.session is not None, "Proxy.start() was not awaited"
        t = pool.route.timeouts
        return await send(self.session, request.method, backend.url + request.raw_path, headers=prepared,
                          body=body, connect_s=t.connect_s, first_byte_s=t.first_byte_s)

    def status_of(self, resp: Any) -> int:
        """The response's status."""
        return int(resp.status)

    def discard(self, resp: Any) -> None:
        """Give the connection back."""
        resp.release()

    def abort(self, resp: Any) -> None:
        """Close the connection (the backend stops working on the request)."""
        resp.close()

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
                    self.first_byte(pool, backend, info)
                    out, relay = await relay_small(request, resp, route.timeouts.idle_s)
                except TryFailed as f:
                    outcome, relay.broken, recorded = f.outcome, True, False
                    raise Reject(502, "upstream_error", f"backend {backend.name}: {f.reason}",
                                 route=route.name) from f
            else:
                try:
                    out, relay = await relay_stream(request, resp, idle_s=route.timeouts.idle_s, started=sent,
                                                    cut_at=pool.cut_deadline(backend), backend_name=backend.name,
                                                    on_first=lambda: self.first_byte(pool, backend, info))
                except ClientGone as gone:
                    relay = gone.info
                if relay.broken:
                    outcome = relay.outcome
        except asyncio.CancelledError:
            relay.client_gone = True
            raise
        finally:
            self.settle(request, pool, backend, info, resp, outcome=outcome, relay=relay, recorded=recorded,
                        request_id=request_id, t0=t0, sent=sent, attempt=attempt)
        return out if out is not None else web.Response(status=499)

