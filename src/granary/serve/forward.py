"""One try of a request against one backend, and the relay of its response (whole, streamed, or SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import ClientError, ClientPayloadError, ClientSession, ClientTimeout, web
from aiohttp.client_exceptions import ClientConnectorError
from multidict import CIMultiDict

from granary.serve.outlier import Outcome

if TYPE_CHECKING:
    from aiohttp import ClientResponse

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
SMALL_BODY_BYTES = 1 << 20


class TryFailed(Exception):
    """A try failed before anything was passed to the client (so it may be retried)."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(slots=True)
class Relay:
    """What happened while relaying a response.

    Attributes:
        outcome: the backend's outcome for outlier detection.
        client_gone: the client went away (or stopped reading) before the end.
        broken: the backend failed after the response started (error event sent, or connection cut).
        first_chunk_s: time from the request to the first body chunk (streams).
        bytes_out: body bytes passed to the client.
        chunks: body chunks passed to the client (whole events for SSE).
        gaps: times between chunks (streams).
        last_at: when the last chunk went to the client.
        on_first: called when the first chunk goes out (the balancer learns the prefill is over).
    """

    outcome: Outcome = "ok"
    client_gone: bool = False
    broken: bool = False
    first_chunk_s: float | None = None
    bytes_out: int = 0
    chunks: int = 0
    gaps: list[float] = field(default_factory=list)
    last_at: float = 0.0
    on_first: Callable[[], None] | None = None

    def tick(self, now: float, started: float) -> None:
        """A chunk goes to the client at ``now``: the first one sets the time to first chunk, later ones a gap."""
        if self.first_chunk_s is None:
            self.first_chunk_s = now - started
            if self.on_first is not None:
                self.on_first()
        else:
            self.gaps.append(now - self.last_at)
        self.last_at = now


def upstream_headers(request: web.BaseRequest, request_id: str) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, plus X-Forwarded-For and X-Request-Id."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in request.headers.items():
        if k.lower() not in HOP_BY_HOP:
            out.add(k, v)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out["X-Request-Id"] = request_id
    return out


def downstream_headers(resp: ClientResponse) -> CIMultiDict[str]:
    """The backend's response headers minus hop-by-hop ones."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in resp.headers.items():
        if k.lower() not in HOP_BY_HOP:
            out.add(k, v)
    return out


async def send(session: ClientSession, method: str, url: str, *, headers: CIMultiDict[str], body: bytes,
               connect_s: float, first_byte_s: float) -> ClientResponse:
    """Send the request and wait for the response headers; failures raise TryFailed with their outcome."""
    timeout = ClientTimeout(total=None, sock_connect=connect_s, sock_read=None)
    try:
        async with asyncio.timeout(first_byte_s):
            return await session.request(method, url, headers=headers, data=body or None, timeout=timeout,
                                         allow_redirects=False)
    except ClientConnectorError as exc:
        raise TryFailed("connect", f"cannot connect: {exc.os_error or exc}") from exc
    except TimeoutError as exc:
        raise TryFailed("timeout", f"no response within {first_byte_s:g} s") from exc
    except ClientError as exc:
        outcome: Outcome = "timeout" if isinstance(exc, asyncio.TimeoutError) else "reset"
        raise TryFailed(outcome, f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise TryFailed("reset", f"{type(exc).__name__}: {exc}") from exc


def sse_error_event(message: str, *, code: str = "upstream_error") -> bytes:
    """An OpenAI-style error as a server-sent event, then the end-of-stream marker."""
    payload = json.dumps({"error": {"message": message, "type": "server_error", "code": code}})
    return f"event: error\ndata: {payload}\n\ndata: [DONE]\n\n".encode()


def _event_end(buf: bytes | bytearray) -> int:
    """Index just past the last complete SSE event in ``buf`` (0 if none)."""
    return max(buf.rfind(b"\n\n") + 2, buf.rfind(b"\r\n\r\n") + 4, 0) if buf else 0


async def relay_small(request: web.BaseRequest, resp: ClientResponse, idle_s: float) -> tuple[web.Response, Relay]:
    """Read a small, length-delimited body whole and answer with it."""
    try:
        async with asyncio.timeout(idle_s):
            body = await resp.read()
    except TimeoutError as exc:
        raise TryFailed("timeout", f"body not read within {idle_s:g} s") from exc
    except (ClientError, OSError) as exc:
        raise TryFailed("reset", f"body cut: {type(exc).__name__}") from exc
    out = web.Response(status=resp.status, headers=downstream_headers(resp), body=body)
    return out, Relay(bytes_out=len(body), chunks=1)


async def relay_stream(request: web.BaseRequest, resp: ClientResponse, *, idle_s: float, started: float,
                       cut_at: float, backend_name: str, on_first: Callable[[], None] | None = None
                       ) -> tuple[web.StreamResponse, Relay]:
    """Pass the body on chunk by chunk; each read and each write may stay idle at most ``idle_s``.

    SSE responses are passed on whole events at a time, so that when the backend dies mid-stream the client
    gets a clean error event (never half an event, never a hang). Other bodies that break are cut, so the
    client sees a truncated response rather than waiting.
    """
    loop = asyncio.get_running_loop()
    sse = resp.headers.get("Content-Type", "").startswith("text/event-stream")
    out = web.StreamResponse(status=resp.status, headers=downstream_headers(resp))
    info = Relay(on_first=on_first)
    try:
        await out.prepare(request)
    except (ConnectionError, RuntimeError) as exc:
        info.client_gone = True
        raise ClientGone(info) from exc
    pending = bytearray()
    content = resp.content
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await content.readany()
        except TimeoutError:
            info.outcome, info.broken = "timeout", True
            await _fail_stream(out, info, sse, f"backend {backend_name} sent nothing for {idle_s:g} s")
            return out, info
        except (ClientPayloadError, ClientError, OSError) as exc:
            info.outcome, info.broken = "reset", True
            if sse:  # whole events that arrived before the connection dropped still reach the client
                pending += _unread(content)
                end = _event_end(pending)
                if end and await _write(out, bytes(pending[:end]), idle_s):
                    info.bytes_out += end
                    info.chunks += _events(pending[:end])
            await _fail_stream(out, info, sse, f"backend {backend_name} closed the stream after "
                                              f"{info.chunks} chunks ({type(exc).__name__})")
            return out, info
        if not chunk:
            break
        if sse and not (chunk := complete_events(pending, chunk)):
            continue
        now = loop.time()
        info.tick(now, started)
        if not await _write(out, chunk, idle_s):
            info.client_gone = True
            return out, info
        info.bytes_out += len(chunk)
        info.chunks += _events(chunk) if sse else 1
        if now >= cut_at:
            info.broken = True
            await _fail_stream(out, info, sse, f"backend {backend_name} was removed from the gateway", code="drained")
            return out, info
    if pending and not await _write(out, bytes(pending), idle_s):
        info.client_gone = True
        return out, info
    try:
        await out.write_eof()
    except (ConnectionError, RuntimeError):
        info.client_gone = True
    return out, info


def complete_events(pending: bytearray, chunk: bytes) -> bytes:
    """Add ``chunk`` to ``pending`` and take out the SSE events now complete (b"" while none is)."""
    pending += chunk
    end = _event_end(pending)
    if not end:
        return b""
    out = bytes(pending[:end])
    del pending[:end]
    return out


def _events(data: bytes | bytearray) -> int:
    """Whole SSE events in ``data`` (a stream's chunks are counted in events, however the reads coalesced)."""
    return data.count(b"\n\n") + data.count(b"\r\n\r\n")


def _unread(content: Any) -> bytes:
    """Bytes the client stream received but nobody read yet. aiohttp raises a payload error before handing out
    what it already buffered, so data that arrived together with the connection loss would otherwise be lost
    (it depends on scheduling: under load the last events and the reset are read in one go)."""
    buffered = getattr(content, "_buffer", None)
    if not buffered:
        return b""
    data = b"".join(bytes(b) for b in buffered)
    buffered.clear()
    return data


class ClientGone(Exception):
    """The client went away before the response could start."""

    def __init__(self, info: Relay) -> None:
        super().__init__("client went away")
        self.info = info


async def _write(out: web.StreamResponse, chunk: bytes, idle_s: float) -> bool:
    try:
        async with asyncio.timeout(idle_s):
            await out.write(chunk)
    except (ConnectionError, RuntimeError, TimeoutError):
        return False
    return True


async def _fail_stream(out: web.StreamResponse, info: Relay, sse: bool, message: str, *,
                       code: str = "upstream_error") -> None:
    """End a broken response: an error event for SSE, a cut connection otherwise."""
    if sse and await _write(out, sse_error_event(message, code=code), 5.0):
        try:
            await out.write_eof()
            return
        except (ConnectionError, RuntimeError):
            pass
    transport = _transport(out)
    if transport is not None:
        transport.abort()


def _transport(out: web.StreamResponse) -> Any:
    req = getattr(out, "_req", None)
    return None if req is None else req.transport

