"""A worker: one process (one event loop) serving the shared port, taking its backend table from the supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from granary.serve.backend import LoadReport
from granary.serve.config import GatewayConfig
from granary.serve.metrics import AccessLog, GatewayMetrics
from granary.serve.pool import MemberSpec
from granary.serve.router import clock

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 0.1
GC_YOUNG_THRESHOLD = 20_000


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT, so several processes can accept on the same port and the kernel
    spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(4096)
    sock.setblocking(False)
    return sock


def tune_gc(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Fewer cyclic collections on the request path: what start-up allocated moves out of the collector's
    sight (``gc.freeze``), and the youngest generation is collected every ``young_threshold`` allocations rather
    than every 700. With hundreds of connections in flight, the collector otherwise walks their protocols,
    tasks and futures over and over (about 8 % of a worker's CPU at 256 connections, measured with py-spy)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, 20, 20)


def member_from_dict(d: Mapping[str, Any]) -> MemberSpec:
    """A MemberSpec from its JSON form (as sent over the control channel)."""
    load = d.get("load")
    return MemberSpec(name=d["name"], url=d["url"], weight=float(d["weight"]), draining=bool(d.get("draining")),
                      healthy=bool(d.get("healthy", True)), source=str(d.get("source", "config")),
                      load=None if not load else LoadReport(**load))


class Worker:
    """The data plane of one process: the proxy, its HTTP server on the shared socket, and housekeeping.

    Args:
        config: the gateway configuration.
        metrics: metrics sink (a private registry in-process; multiprocess files in worker processes).
        seed: seed of the policies' random choices (tests).
        shared_dir: folder of the state files the worker processes share (None: the only worker).
        worker_index: this worker's number.
    """

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics, seed: int | None = None,
                 shared_dir: str | None = None, worker_index: int = 0) -> None:
        self.config = config
        self.access_log = AccessLog(config.access_log) if config.access_log else None
        kw: dict[str, Any] = {"seed": seed, "shared_dir": shared_dir, "worker_index": worker_index,
                              "num_workers": config.num_workers if shared_dir else 1}
        self.proxy: Any
        if config.server == "lean":
            from granary.serve.lean import LeanProxy

            self.proxy = LeanProxy(config, metrics=metrics, access_log=self.access_log, **kw)
        else:
            from granary.serve.proxy import Proxy

            self.proxy = Proxy(config, metrics=metrics, access_log=self.access_log, **kw)
        self.server: web.Server | None = None
        self.lean: Any = None
        self.listener: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (listening already)."""
        await self.proxy.start()
        loop = asyncio.get_running_loop()
        if self.config.server == "lean":
            from granary.serve.httpserver import LeanServer

            self.lean = LeanServer(self.proxy.handle, max_body_bytes=self.config.max_body_bytes,
                                   client_idle_s=self.config.client_idle_s)
            self.listener = await loop.create_server(self.lean, sock=sock, backlog=4096)
        else:
            self.server = web.Server(self.proxy.handle, handler_cancellation=True, access_log=None)
            self.listener = await loop.create_server(self.server, sock=sock, backlog=4096)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))

    async def _housekeeping(self) -> None:
        """Reap drained backends, let ejected ones back in, keep the health gauges true, flush the access log."""
        m = self.proxy.metrics
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = clock()
            for name, pool in self.proxy.pools.items():
                for gone in pool.reap(now):
                    m.forget_backend(name, gone)
                back = pool.returned_from_ejection(now)
                for b in back:
                    log.info("backend %s of route %s is back after its ejection (slow start)", b.name, name)
                if back:
                    self.proxy.pending[name].wake_all()
                for b in pool.members.values():
                    m.set_healthy(name, b.name, b.available(now))
            if m.dirty:
                m.flush()
            if self.access_log is not None:
                self.access_log.flush()
            upstream = getattr(self.proxy, "upstream", None)
            if upstream is not None:
                upstream.prune(now)

    def apply_members(self, routes: Mapping[str, Sequence[MemberSpec]]) -> None:
        """Take the supervisor's backend table (the whole table, every time)."""
        now = clock()
        for name, specs in routes.items():
            pool = self.proxy.pools.get(name)
            if pool is None:
                continue
            pool.apply(specs, now=now)
            for gone in pool.reap(now):
                self.proxy.metrics.forget_backend(name, gone)
            self.proxy.pending[name].wake_all()

    def stats(self) -> dict[str, Any]:
        """This worker's view: its pools (per-process counters), admission and queues."""
        now = clock()
        return {"pid": os.getpid(), "in_flight": self.proxy.admission.used,
                "queued": self.proxy.admission.waiting,
                "routes": [pool.snapshot(now) for pool in self.proxy.pools.values()]}

    async def stop(self, drain_s: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``drain_s``, then close everything."""
        self.stopping = True
        if self.listener is not None:
            self.listener.close()
        if self.server is not None:
            await self.server.shutdown(timeout=drain_s)
        if self.lean is not None:
            await self.lean.shutdown(drain_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.proxy.close()
        self.proxy.metrics.flush()
        if self.access_log is not None:
            self.access_log.close()


def worker_main(config: GatewayConfig, port: int, conn: Any, metrics_dir: str, index: int) -> None:
    """Entry point of a worker process (spawned by the supervisor)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s worker{index} %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    from granary.serve.runtime import new_event_loop

    loop = new_event_loop(config.uvloop)
    asyncio.set_event_loop(loop)
    tune_gc()
    try:
        loop.run_until_complete(_worker_async(config, port, conn, metrics_dir, index))
    finally:
        loop.close()


async def _worker_async(config: GatewayConfig, port: int, conn: Any, shared_dir: str, index: int) -> None:
    import prometheus_client

    worker = Worker(config, metrics=GatewayMetrics(prometheus_client.REGISTRY), shared_dir=shared_dir,
                    worker_index=index)
    await worker.start(reuseport_socket(config.host, port))
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    signal_drain = config.routes[0].drain_s if config.routes else 5.0
    def on_term() -> None:
        if not done.done():
            done.set_result(signal_drain)

    loop.add_signal_handler(signal.SIGTERM, on_term)

    def on_message() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: drain and leave
            loop.remove_reader(conn.fileno())
            if not done.done():
                done.set_result(signal_drain)
            return
        op = msg.get("op")
        if op == "members":
            worker.apply_members({r: [member_from_dict(m) for m in ms] for r, ms in msg["routes"].items()})
        elif op == "stats":
            conn.send({"id": msg.get("id"), "stats": worker.stats()})
        elif op == "stop" and not done.done():
            done.set_result(float(msg.get("drain_s", 5.0)))

    loop.add_reader(conn.fileno(), on_message)
    conn.send({"op": "ready", "pid": os.getpid()})
    drain_s = await done
    loop.remove_reader(conn.fileno())
    await worker.stop(drain_s)
