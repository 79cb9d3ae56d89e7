"""The lean server side of the gateway: an asyncio Protocol per client connection, requests parsed by httptools.

The protocol reads a request's head and body itself (bounded by ``max_body_bytes``, each body read by
``client_idle_s``), then hands a complete :class:`Incoming` to the handler coroutine, which answers through the
protocol's write methods. Requests on one connection are answered in order; pipelined ones wait their turn with
reading paused. When the client goes away, the handler's task is cancelled, as aiohttp does with
``handler_cancellation``, so the backend stops working for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote

from granary.serve.upstream import httptools

log = logging.getLogger(__name__)

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
WRITE_HIGH_WATER = 256 * 1024


class Headers:
    """The client's headers as sent (a list of byte pairs) with a case-insensitive ``get`` built on first use."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case)."""
        if self._map is None:
            self._map = {}
            for k, v in self.raw:
                self._map.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        return self._map.get(name.lower(), default)


class Incoming:
    """One complete client request (the attributes the router reads, named as on aiohttp's request).

    Attributes:
        method: the HTTP method.
        raw_path: the path with its query string, as sent.
        path: the percent-decoded path.
        headers: the request headers.
        remote: the client's address.
        body: the whole body.
        keep_alive: whether the connection stays open after the answer.
        reject: (status, reason, message) when the server refused the request before the handler (413, 408).
    """

    __slots__ = ("_cookies", "body", "conn", "headers", "keep_alive", "method", "path", "raw_path", "reject", "remote")

    def __init__(self, method: str, raw_path: str, headers: Headers, remote: str, body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        q = raw_path.find("?")
        path = raw_path if q < 0 else raw_path[:q]
        self.path = unquote(path) if "%" in path else path
        self.headers = headers
        self.remote = remote
        self.body = body
        self.keep_alive = keep_alive
        self.reject: tuple[int, str, str] | None = None
        self.conn: ClientConnection | None = None
        self._cookies: dict[str, str] | None = None

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies."""
        if self._cookies is None:
            jar: SimpleCookie = SimpleCookie()
            jar.load(self.headers.get("cookie") or "")
            self._cookies = {k: m.value for k, m in jar.items()}
        return self._cookies


Handler = Callable[[Incoming, "ClientConnection"], Coroutine[Any, Any, None]]


class LeanServer:
    """Settings and live connections shared by the connections of one listening socket.

    Args:
        handler: answers one request through the connection's write methods.
        max_body_bytes: larger bodies are refused (413) without being read.
        client_idle_s: a client that stalls this long while sending its body is answered with 408.
    """

    def __init__(self, handler: Handler, *, max_body_bytes: int, client_idle_s: float) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.client_idle_s = client_idle_s
        self.connections: set[ClientConnection] = set()
        self.closing = False

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    async def shutdown(self, timeout_s: float) -> None:
        """Close idle connections now, let busy ones finish their request for up to ``timeout_s``."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.connections and loop.time() < deadline:
            waits = [c.task for c in self.connections if c.task is not None]
            if not waits:
                break
            await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()))
        for conn in list(self.connections):
            conn.abort()


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each, and writes what it answers."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.task: asyncio.Task[None] | None = None
        self.current: Incoming | None = None
        self.queue: deque[Incoming] = deque()
        self.gone = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._refused: tuple[int, str, str] | None = None
        self._in_body = False  # a body is being read: the idle timer watches it
        self._progress = 0.0  # when the last body bytes came
        self.chunked = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "bad_request", "protocol upgrades are not supported by the gateway")
        except httptools.HttpParserError as exc:
            if self._refused is None:
                self._refuse(400, "bad_request", f"malformed HTTP request: {exc}")
        if self._in_body and self.timer is None:  # a body still to come (most arrive whole: no timer at all)
            self.timer = self.loop.call_later(self.server.client_idle_s, self._check_stalled)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server.connections.discard(self)
        self._cancel_timer()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        fut = self.drain_waiter
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        fut = self.drain_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_body = False
        self._url.clear()
        self._headers = []
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        length = self.parser.get_content_length() if hasattr(self.parser, "get_content_length") else None
        if length is None:
            for k, v in self._headers:
                if k.lower() == b"content-length" and v.isdigit():
                    length = int(v)
        limit = self.server.max_body_bytes
        if length is not None and length > limit:
            self._refuse(413, "body_too_large", f"the request body has {length} bytes; the limit is {limit}")
            return
        if length or any(k.lower() == b"transfer-encoding" for k, _ in self._headers):
            self._in_body = True
            self._progress = self.loop.time()

    def on_body(self, body: bytes) -> None:
        if self._refused is not None:
            return
        self._size += len(body)
        if self._size > self.server.max_body_bytes:
            limit = self.server.max_body_bytes
            self._refuse(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")
            return
        self._body.append(body)
        self._progress = self.loop.time()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_timer()
        if self._refused is not None:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        req = Incoming(self.parser.get_method().decode(), url.decode("latin-1"), Headers(self._headers),
                       self.remote, body, self.parser.should_keep_alive() and not self.server.closing)
        if self.task is None:
            self._run(req)
        else:
            self.queue.append(req)
            if self.transport is not None:
                self.transport.pause_reading()

    # -- writing (used by the handler) -----------------------------------------------------------------
    def send_response(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes,
                      req: Incoming) -> None:
        """A whole response with a Content-Length."""
        if self.gone or self.transport is None:
            return
        parts = [b"HTTP/1.1 ", str(status).encode(), b" ", REASONS.get(status, b"Unknown"), b"\r\n"]
        for k, v in headers:
            parts += (k, b": ", v, b"\r\n")
        parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        if not req.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))

    def start_stream(self, status: int, headers: Iterable[tuple[bytes, bytes]], req: Incoming,
                     length: int | None) -> None:
        """The head of a response whose body follows in :meth:`write` calls (chunked unless ``length``)."""
        parts = [b"HTTP/1.1 ", str(status).encode(), b" ", REASONS.get(status, b"Unknown"), b"\r\n"]
        for k, v in headers:
            parts += (k, b": ", v, b"\r\n")
        self.chunked = length is None
        if length is not None:
            parts += (b"Content-Length: ", str(length).encode(), b"\r\n")
        else:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not req.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not self.gone and self.transport is not None:
            self.transport.write(b"".join(parts))

    async def write(self, data: bytes, idle_s: float) -> bool:
        """Send body bytes, waiting at most ``idle_s`` while the client does not read; False if it is gone."""
        if self.gone or self.transport is None or self.transport.is_closing():
            return False
        if self.chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)
        if not self.write_paused:
            return True
        fut = self.drain_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(fut, idle_s)
        except (TimeoutError, ConnectionError):
            return False
        finally:
            self.drain_waiter = None
        return not self.gone

    def end_stream(self) -> bool:
        """Finish a streamed body; False if the client is gone."""
        if self.gone or self.transport is None or self.transport.is_closing():
            return False
        if self.chunked:
            self.transport.write(b"0\r\n\r\n")
        return True

    def abort(self) -> None:
        """Cut the connection (a broken body must not look complete to the client)."""
        self.gone = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after what was written is sent."""
        if self.transport is not None:
            self.transport.close()

    # -- internals -------------------------------------------------------------------------------------
    def _run(self, req: Incoming) -> None:
        self.current = req
        req.conn = self
        self.task = self.loop.create_task(self.server.handler(req, self))
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway handler failed", exc_info=task.exception())
            self.abort()
            return
        if self.gone or self.transport is None:
            return
        if self.server.closing or self.transport.is_closing() or self.current is None or not self.current.keep_alive:
            self.transport.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.transport.resume_reading()
            self._run(nxt)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer before the body was read (too large, stalled, malformed) and close the connection."""
        self._refused = (status, reason, message)
        self._in_body = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()
        method = "GET"
        with contextlib.suppress(httptools.HttpParserError):
            method = self.parser.get_method().decode()
        url = b"".join(self._url).decode("latin-1") or "/"
        req = Incoming(method, url, Headers(self._headers), self.remote, b"", False)
        req.reject = self._refused
        if self.task is None:
            self._run(req)
        else:
            self.queue.append(req)

    def _check_stalled(self) -> None:
        """The idle timer fired: refuse the request if no body bytes came for ``client_idle_s``, else wait on."""
        self.timer = None
        if not self._in_body:
            return
        left = self.server.client_idle_s - (self.loop.time() - self._progress)
        if left > 0:
            self.timer = self.loop.call_later(left, self._check_stalled)
        else:
            self._stalled()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _stalled(self) -> None:
        self.timer = None
        idle = self.server.client_idle_s
        self._refuse(408, "client_gone", f"the client sent no body bytes for {idle:g} s")


async def serve(handler: Handler, sock: socket.socket, *, max_body_bytes: int, client_idle_s: float,
                ) -> tuple[LeanServer, asyncio.AbstractServer]:
    """Serve ``handler`` on a listening socket."""
    server = LeanServer(handler, max_body_bytes=max_body_bytes, client_idle_s=client_idle_s)
    listener = await asyncio.get_running_loop().create_server(server, sock=sock, backlog=4096)
    return server, listener

