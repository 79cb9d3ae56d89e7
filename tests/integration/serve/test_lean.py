"""The lean HTTP path against raw backends on 127.0.0.1 (one process, real sockets): header handling, request and
response framing, keep-alive reuse of upstream connections, pipelining, HTTP/1.0 clients; and the aiohttp
fallback answering the same way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from granary.serve.config import config_from_dict
from granary.serve.gateway import Gateway

Backend = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One request as a backend sees it (Content-Length bodies only: the gateway always sends one)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def echo(*, one_per_connection: bool = False) -> tuple[Backend, list[int]]:
    """A backend answering each request with what it received, as JSON; counts the connections it accepted.
    With ``one_per_connection`` it closes a connection when a second request arrives on it, unanswered (as a
    backend whose keep-alive timeout runs out just as the gateway reuses the connection)."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        served = 0
        while (req := await _read_request(reader)) is not None:
            if one_per_connection and served:
                break
            served += 1
            line, headers, body = req
            if line.startswith("HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n")
            else:
                out = json.dumps({"line": line, "headers": headers, "body": body.decode()}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Keep-Alive: timeout=5\r\nContent-Length: %d\r\n\r\n%b" % (len(out), out))
            await writer.drain()
        writer.close()

    return handle, accepted


async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend whose body has neither a length nor chunks: it ends when the connection does."""
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    for part in (b"hello ", b"world"):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return out


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length responses."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


def run_with(backend: Backend, body: Callable[[int, Gateway], Awaitable[Any]], *, server: str = "lean",
             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start ``backend`` and a one-worker gateway in front of it, run ``body(gateway_port, gateway)``."""
    monkeypatch.setenv("GRANARY_HOME", str(tmp_path / "home"))

    async def main() -> Any:
        srv = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        cfg = config_from_dict({"port": 0, "admin_port": 0, "server": server, "routes": [{
            "name": "r", "path_prefix": "/", "policy": "round_robin", "health": {"enabled": False},
            "backends": [{"name": "b", "url": f"http://127.0.0.1:{port}/base"}]}]})
        gw = Gateway(cfg)
        await gw.start()
        try:
            return await body(gw.port, gw)
        finally:
            await gw.stop(0.5)
            srv.close()

    return asyncio.run(main())


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
def test_headers_and_bodies_are_forwarded(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle, _ = echo()

    async def body(port: int, gw: Gateway) -> None:
        raw = await exchange(port, b"POST /v1/x%20y?q=1 HTTP/1.1\r\nHost: client.example\r\n"
                                   b"X-Forwarded-For: 10.1.1.1\r\nX-Request-Id: abc\r\n"
                                   b"Proxy-Authorization: secret\r\nTransfer-Encoding: chunked\r\n"
                                   b"Connection: close\r\nX-Custom: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        [(status, headers, payload)] = responses(raw)
        got = json.loads(payload)
        assert status == 200 and headers["content-type"] == "application/json"
        assert got["line"] == "POST /base/v1/x%20y?q=1 HTTP/1.1"  # the backend's path prefix, the query as sent
        assert got["body"] == "hello world" and got["headers"]["content-length"] == "11"  # de-chunked
        assert got["headers"]["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert got["headers"]["x-request-id"] == "abc" and got["headers"]["x-custom"] == "1"
        assert got["headers"]["host"].startswith("127.0.0.1:")
        assert "proxy-authorization" not in got["headers"] and "transfer-encoding" not in got["headers"]

    run_with(handle, body, server=server, tmp_path=tmp_path, monkeypatch=monkeypatch)


def test_keep_alive_pipelining_http10_and_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle, accepted = echo()

    async def body(port: int, gw: Gateway) -> None:
        pipelined = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
        raw = await exchange(port, pipelined + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = responses(raw)
        assert [json.loads(p)["line"] for _, _, p in got] == [f"GET /base/p{i} HTTP/1.1" for i in range(3)] + [
            "GET /base/last HTTP/1.1"]  # answered in order on one connection
        assert got[-1][1]["connection"] == "close"
        assert accepted == [1]  # one upstream connection, kept alive and reused for all four
        old = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")  # HTTP/1.0: no keep-alive, closed after
        assert json.loads(responses(old)[0][2])["line"] == "GET /base/old HTTP/1.1"
        head = await exchange(port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 11\r\n" in head  # as the backend said, with no body

    run_with(handle, body, tmp_path=tmp_path, monkeypatch=monkeypatch)


def test_a_connection_closed_by_the_backend_is_replaced_without_a_retry(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    handle, accepted = echo(one_per_connection=True)

    async def body(port: int, gw: Gateway) -> str:
        for i in range(3):
            raw = await exchange(port, b"GET /n%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
            assert responses(raw)[0][0] == 200
        text, _ = gw.metrics_text()
        return text.decode()

    text = run_with(handle, body, tmp_path=tmp_path, monkeypatch=monkeypatch)
    assert len(accepted) == 3
    assert 'granary_gateway_retries_total{backend="b",route="r"}' not in text  # no try counted as failed
    assert 'granary_gateway_backend_ejections_total{backend="b",route="r"}' not in text


def test_close_delimited_body_is_streamed_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(port: int, gw: Gateway) -> None:
        raw = await exchange(port, b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        assert rest == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n" or rest == b"b\r\nhello world\r\n0\r\n\r\n"

    run_with(close_delimited, body, tmp_path=tmp_path, monkeypatch=monkeypatch)
