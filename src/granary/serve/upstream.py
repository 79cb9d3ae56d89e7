"""The lean client side of the gateway: pooled keep-alive HTTP/1.1 connections to backends, parsed by httptools.

One :class:`UpstreamConnection` carries one request at a time. Its body is buffered only up to
``READ_HIGH_WATER`` bytes: past that the socket stops being read until the relay takes the data, so a fast
backend and a slow client never fill the gateway's memory. A wait sets a deadline on the connection, and one
sweep per pool (every ``SWEEP_S`` while anything waits) fails the waits past their deadline: a timer per wait
(``call_later`` and its cancel) cost more than the rest of the wait, and timeouts here are seconds long, so
firing up to ``SWEEP_S`` late is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from granary.errors import MissingDependencyError
from granary.serve.forward import TryFailed

try:
    import httptools
except ImportError as exc:  # pragma: no cover - the serve extra installs it
    raise MissingDependencyError("httptools", "serve") from exc

READ_HIGH_WATER = 256 * 1024
SWEEP_S = 0.05
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length"})
REPLACED = HOP_BY_HOP | {b"x-forwarded-for", b"x-request-id"}  # the gateway sets these itself


class StaleConnection(Exception):
    """A reused keep-alive connection was closed by the backend before it sent a byte (safe to send again)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a backend URL points: the pool key, the Host header and the path prefix to prepend."""

    host: str
    port: int
    host_header: bytes
    prefix: bytes

    @classmethod
    def of(cls, url: str) -> Target:
        """Parse ``http://host:port[/prefix]`` (validated by the config already)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        return cls(host, port, parts.netloc.encode("idna"), parts.path.rstrip("/").encode())


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend and the response in progress on it."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.deadline = 0.0
        self.timeout_s = 0.0
        self.what = ""
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.eof_body = False
        self.head_done = False
        self.done = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionResetError(f"malformed response from the backend: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.eof_body and not self.done and exc is None:
            self.done = True
            self._wake()
        if not self.done:
            if not self.got_bytes and self.reused:
                self._fail(StaleConnection())
            else:
                self._fail(ConnectionResetError(str(exc) if exc else "the backend closed the connection"))

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        if not self.keep_alive:  # no length and not chunked: the body ends when the connection does
            names = {n.lower() for n, _ in self.headers}
            self.eof_body = b"content-length" not in names and b"transfer-encoding" not in names
        if self.head_only:  # a response to HEAD has no body, whatever its Content-Length says
            self.done, self.keep_alive = True, False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    # -- used by the proxy -----------------------------------------------------------------------------
    def send(self, data: bytes, *, head_only: bool) -> None:
        """Write a whole request (head and body) and get ready for its response."""
        self._reset(head_only=head_only)
        assert self.transport is not None
        self.transport.write(data)

    async def wait_head(self, timeout_s: float) -> None:
        """Wait for the response's status line and headers."""
        while not self.head_done:
            await self.wait(timeout_s, "no response within {:g} s")

    def take(self) -> bytes:
        """All body bytes buffered now (possibly none)."""
        if not self.chunks:
            return b""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    async def read(self, idle_s: float) -> bytes:
        """The next body bytes; b"" at the end of the body. Raises on a cut connection or ``idle_s`` of silence."""
        while True:
            if self.chunks:
                return self.take()
            if self.done:
                return b""
            await self.wait(idle_s, "nothing for {:g} s")

    async def read_all(self, idle_s: float) -> bytes:
        """The whole body (each wait for more at most ``idle_s``)."""
        parts = []
        while chunk := await self.read(idle_s):
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Drop the connection (a response not read to its end cannot be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the backend sees a reset and stops generating)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals -------------------------------------------------------------------------------------
    async def wait(self, timeout_s: float, what: str) -> None:
        """Wait for the next event of the response (head, body bytes, end), at most ``timeout_s``; raises
        TimeoutError with ``what`` (formatted with the timeout) or the connection's error."""
        if self.error is not None:
            raise self.error
        fut = self.waiter = self.loop.create_future()
        self.deadline = self.loop.time() + timeout_s
        self.timeout_s, self.what = timeout_s, what
        waiting = self.pool.waiting
        waiting.add(self)
        if not self.pool.sweeping:
            self.pool.start_sweep(self.loop)
        try:
            await fut
        finally:
            waiting.discard(self)
            self.waiter = None

    def expire(self) -> None:
        """The wait ran past its deadline: fail it with TimeoutError."""
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_exception(TimeoutError(self.what.format(self.timeout_s)))

    def _wake(self) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_exception(exc)


class UpstreamPool:
    """Keep-alive connections per backend address, reused most-recent first.

    Args:
        max_idle_per_host: idle connections kept per backend; more are closed when released.
        idle_s: idle connections older than this are closed by :meth:`prune`.
    """

    def __init__(self, *, max_idle_per_host: int = 512, idle_s: float = 30.0) -> None:
        self.max_idle = max_idle_per_host
        self.idle_s = idle_s
        self.idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self.opened = 0
        self.reuses = 0
        self.waiting: set[UpstreamConnection] = set()
        self.sweeping = False

    def start_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check the waits' deadlines every ``SWEEP_S`` for as long as any connection waits."""
        self.sweeping = True
        loop.call_later(SWEEP_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c in self.waiting if c.deadline <= now]:
            self.waiting.discard(conn)
            conn.expire()
        if self.waiting:
            loop.call_later(SWEEP_S, self._sweep, loop)
        else:
            self.sweeping = False

    def idle_connection(self, target: Target) -> UpstreamConnection | None:
        """An idle keep-alive connection to ``target``, if there is one (no await: the common case)."""
        stack = self.idle.get((target.host, target.port))
        while stack:
            conn = stack.pop()
            if not conn.closed:
                conn.reused = True
                self.reuses += 1
                return conn
        return None

    async def acquire(self, target: Target, connect_s: float) -> UpstreamConnection:
        """An idle connection to ``target``, or a new one (raises TryFailed("connect") when none can be made)."""
        conn = self.idle_connection(target)
        if conn is not None:
            return conn
        key = (target.host, target.port)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self, key), target.host,
                                                       target.port)
        except TimeoutError as exc:
            raise TryFailed("connect", f"cannot connect within {connect_s:g} s") from exc
        except OSError as exc:
            raise TryFailed("connect", f"cannot connect: {exc}") from exc
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose response was read to its end; others are closed."""
        if conn.closed or not conn.done or not conn.keep_alive or conn.chunks:
            conn.close()
            return
        stack = self.idle.setdefault(conn.key, [])
        if len(stack) >= self.max_idle:
            conn.close()
            return
        conn.reused = True
        conn.idle_since = time.monotonic()
        stack.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): never hand it out again."""
        stack = self.idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    def prune(self, now: float) -> int:
        """Close connections idle for longer than ``idle_s``; returns how many."""
        closed = 0
        for stack in self.idle.values():
            while stack and now - stack[0].idle_since > self.idle_s:
                stack.pop(0).close()
                closed += 1
        return closed

    def close(self) -> None:
        """Close every idle connection."""
        for stack in self.idle.values():
            for conn in stack:
                conn.close()
            stack.clear()


def build_head(method: str, target: Target, raw_path: str, headers: Any, extra: bytes, body_len: int) -> bytes:
    """The request head sent to a backend: the client's headers minus hop-by-hop ones, plus ``extra``."""
    parts = [method.encode(), b" ", target.prefix, raw_path.encode("latin-1"), b" HTTP/1.1\r\nHost: ",
             target.host_header, b"\r\n"]
    for name, value in headers:
        if name.lower() not in REPLACED:
            parts += (name, b": ", value, b"\r\n")
    parts.append(extra)
    if body_len or method not in ("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"):
        parts += (b"Content-Length: ", str(body_len).encode(), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
