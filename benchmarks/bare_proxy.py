"""Anchor for gateway_bench.py: a bare pass-through HTTP proxy on aiohttp and uvloop, with no balancing,
health checks, retries, metrics or logging, so the cost of Granary's features over plain Python is visible.

Usage: python benchmarks/bare_proxy.py BACKEND_URL [--workers N]
Prints ``{"url": ...}`` once it listens; N worker processes share the port with SO_REUSEPORT (as the gateway's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys

import aiohttp
import uvloop
from aiohttp import web


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(backend: str, sock: socket.socket) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        async with session.request(request.method, backend + request.raw_path, data=body) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, sock=sock, backlog=4096)
    await asyncio.Event().wait()


def worker(backend: str, port: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(serve(backend, listening_socket(port)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("backend", help="http://host:port of the backend")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    first = listening_socket(0)
    port = first.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=worker, args=(args.backend.rstrip("/"), port), daemon=True)
             for _ in range(args.workers - 1)]
    for p in procs:
        p.start()
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid()}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvloop.run(serve(args.backend.rstrip("/"), first))


if __name__ == "__main__":
    main()
