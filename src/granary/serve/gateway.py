"""The gateway supervisor: owns the backend table, runs health checks, discovery and the admin API, and the workers.

What is shared and what is per process (see docs/serve.md, "Processes"):

- Shared, owned by the supervisor and copied to every worker on each change: the backend table (static, admin
  and job-registered backends, weights, drains), active health verdicts and load reports.
- Per worker process: balancer state (round-robin positions, smooth-WRR scores, rings, the prefix index),
  requests in flight, latency averages, passive outlier ejections, retry budgets and admission queues.
- Metrics: every worker writes its own files (prometheus-client multiprocess mode); the admin port sums them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from granary.serve.admin import AdminAuth, admin_app
from granary.serve.config import GatewayConfig
from granary.serve.health import HealthChecker
from granary.serve.metrics import GatewayMetrics
from granary.serve.table import BackendTable
from granary.serve.worker import Worker, member_from_dict, reuseport_socket, tune_gc, worker_main

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """Where running gateways leave their state files (``$GRANARY_HOME/gateway``)."""
    from granary.config import Settings

    return Settings.from_env().home / "gateway"


class Gateway:
    """An inference gateway: ``await start()`` / ``await stop()``, or ``run()`` until a signal.

    With ``workers: 1`` everything runs in the calling process; with more, the supervisor (this object) spawns
    worker processes that share the data port through SO_REUSEPORT.

    Args:
        config: the gateway configuration.
        catalog_url: catalog for admin tokens and job-registered endpoints (default: ``GRANARY_CATALOG_URL``).
        auth: ``local`` or ``tokens`` (default: ``GRANARY_AUTH``).
        seed: seed of the policies' random choices (tests, in-process only).
    """

    def __init__(self, config: GatewayConfig, *, catalog_url: str | None = None, auth: str | None = None,
                 seed: int | None = None) -> None:
        self.config = config
        self.table = BackendTable(config)
        self.catalog_url = catalog_url
        self.secret = secrets.token_urlsafe(32)
        self.auth = AdminAuth((auth or os.environ.get("GRANARY_AUTH") or "local").lower(), local_secret=self.secret,
                              catalog_url=catalog_url)
        self.seed = seed
        self.port = 0
        self.admin_url = ""
        self.num_workers = config.num_workers
        self.local: Worker | None = None
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self._holder: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._metrics_dir: str | None = None
        self._admin_rejects = 0
        self._state_file: Path | None = None
        self.started_at = 0.0

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the ports, start the workers, health checks, discovery and the admin API."""
        cfg = self.config
        self.started_at = time.time()
        if self.num_workers == 1:
            sock = reuseport_socket(cfg.host, cfg.port)
            self.port = sock.getsockname()[1]
            self.local = Worker(cfg, metrics=GatewayMetrics(), seed=self.seed)
            await self.local.start(sock)
        else:
            self._holder = reuseport_socket(cfg.host, cfg.port, listen=False)  # holds the port number
            self.port = self._holder.getsockname()[1]
            self._metrics_dir = tempfile.mkdtemp(prefix=f"granary-gw-{cfg.name}-")
            for i in range(self.num_workers):
                self._spawn(i)
            await self._wait_ready()
        checker = HealthChecker(self.table, cfg.routes, on_change=self.broadcast)
        self._tasks.append(asyncio.create_task(checker.run(), name="health"))
        if cfg.discovery_interval_s > 0:
            from granary.serve.discovery import discovery_loop

            self._tasks.append(asyncio.create_task(discovery_loop(self), name="discovery"))
        if self.procs:
            self._tasks.append(asyncio.create_task(self._watch_workers(), name="watch-workers"))
        self._runner = web.AppRunner(admin_app(self, self.auth), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.admin_host, cfg.admin_port)
        await site.start()
        admin_port = self._runner.addresses[0][1]
        self.admin_url = f"http://{cfg.admin_host}:{admin_port}"
        self._write_state()
        log.info("gateway %s: data on %s:%d (%d workers), admin on %s", cfg.name, cfg.host, self.port,
                 self.num_workers, self.admin_url)

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``drain_s``), stop the workers."""
        drain = drain_s if drain_s is not None else max((r.drain_s for r in self.config.routes), default=5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.local is not None:
            await self.local.stop(drain)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"op": "stop", "drain_s": drain})
        deadline = time.monotonic() + drain + 5.0
        for proc in self.procs:
            await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._holder is not None:
            self._holder.close()
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._state_file is not None:
            self._state_file.unlink(missing_ok=True)

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully."""
        from granary.serve.runtime import new_event_loop

        loop = new_event_loop(self.config.uvloop)
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            loop.run_until_complete(self.start())
            if self.local is not None:  # this process serves requests itself (workers: 1)
                tune_gc()
            loop.run_until_complete(stop.wait())
        finally:
            loop.run_until_complete(self.stop())
            loop.close()

    # -- workers -------------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(self.config, self.port, child, self._metrics_dir, index),
                           name=f"granary-gateway-worker-{index}", daemon=True)
        proc.start()
        child.close()
        if index < len(self.procs):
            asyncio.get_running_loop().remove_reader(self.conns[index].fileno())
            self.conns[index].close()
            self.procs[index], self.conns[index] = proc, parent
        else:
            self.procs.append(proc)
            self.conns.append(parent)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[-(index + 1)] = ready
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_reply, index)

    def _on_reply(self, index: int) -> None:
        conn = self.conns[index]
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            return
        key = -(index + 1) if msg.get("op") == "ready" else msg.get("id")
        fut = self._replies.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _wait_ready(self) -> None:
        waiting = [f for k, f in self._replies.items() if k < 0]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*waiting)
        except TimeoutError:
            raise RuntimeError("gateway workers did not start within 60 s; see their log lines above") from None
        self.broadcast()

    async def _watch_workers(self) -> None:
        from prometheus_client import multiprocess

        while True:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self.procs):
                if not proc.is_alive():
                    log.error("gateway worker %d (pid %s) exited with %s; starting a new one", i, proc.pid,
                              proc.exitcode)
                    multiprocess.mark_process_dead(proc.pid, self._metrics_dir)
                    self._spawn(i)
                    await self._wait_ready()

    def broadcast(self) -> None:
        """Send the backend table to every worker."""
        if self.local is not None:
            self.local.apply_members({r: list(ms) for r, ms in self.table.snapshot().items()})
            return
        msg = {"op": "members", "routes": self.table.to_json(), "version": self.table.version}
        for conn in self.conns:
            try:
                conn.send(msg)
            except OSError as exc:
                log.warning("could not reach a worker: %s", exc)

    async def broadcast_and_wait(self) -> None:
        """Send the table and wait until every worker has applied it."""
        self.broadcast()
        await self.worker_stats()

    async def worker_stats(self) -> list[dict[str, Any]]:
        """Each worker's own view (its counters are per process)."""
        if self.local is not None:
            return [self.local.stats()]
        futs = []
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            i = next(self._ids)
            fut = self._replies[i] = loop.create_future()
            futs.append(fut)
            try:
                conn.send({"op": "stats", "id": i})
            except OSError:
                fut.set_result({"stats": None})
        try:
            async with asyncio.timeout(5):
                replies = await asyncio.gather(*futs)
        except TimeoutError:
            return []
        return [r["stats"] for r in replies if r.get("stats")]

    # -- admin operations (also the Python API) -------------------------------------------------------
    def add_backend(self, route: str, name: str, url: Any, weight: Any = 1.0) -> dict[str, Any]:
        """Add a backend to a route at run time (it enters in slow start)."""
        m = self.table.add(route, name, url, weight)
        log.warning("backend %s (%s) added to route %s", name, m.url, route)
        return {"route": route, "name": m.name, "url": m.url, "weight": m.weight}

    def remove_backend(self, route: str, name: str) -> dict[str, Any]:
        """Remove a backend; it drains for the route's ``drain_s`` first."""
        m = self.table.remove(route, name)
        log.warning("backend %s removed from route %s (draining)", name, route)
        return {"route": route, "name": m.name, "url": m.url}

    def set_weight(self, route: str, name: str, weight: Any) -> dict[str, Any]:
        """Change a backend's weight."""
        m = self.table.set_weight(route, name, weight)
        return {"route": route, "name": m.name, "weight": m.weight}

    def set_draining(self, route: str, name: str, draining: bool = True) -> dict[str, Any]:
        """Drain (or undrain) a backend."""
        m = self.table.set_draining(route, name, draining)
        return {"route": route, "name": m.name, "draining": m.draining}

    async def backends(self) -> dict[str, Any]:
        """The table with each backend's live counters summed over workers."""
        stats = await self.worker_stats()
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for s in stats:
            for r in s["routes"]:
                for b in r["backends"]:
                    agg = live.setdefault((r["route"], b["name"]), {"in_flight": 0, "requests": 0, "ejected_in": 0})
                    agg["in_flight"] += b["in_flight"]
                    agg["requests"] += b["requests"]
                    agg["ejected_in"] += int(bool(b["ejected"]))
        out: dict[str, Any] = {}
        for route, members in self.table.to_json().items():
            out[route] = [{**m, **live.get((route, str(m["name"])), {})} for m in members]
        return {"routes": out, "version": self.table.version, "workers": len(stats)}

    async def status(self) -> dict[str, Any]:
        """The gateway's state: addresses, workers and their per-process views."""
        return {"name": self.config.name, "pid": os.getpid(), "host": self.config.host, "port": self.port,
                "admin_url": self.admin_url, "uptime_s": round(time.time() - self.started_at, 1),
                "workers": await self.worker_stats(), "table_version": self.table.version,
                "routes": [{"name": r.name, "policy": r.policy, "models": list(r.models),
                            "path_prefix": r.path_prefix} for r in self.config.routes]}

    def metrics_reject_admin(self) -> None:
        """Count a refused admin call."""
        self._admin_rejects += 1
        if self.local is not None:
            self.local.proxy.metrics.reject("admin", "unauthorized")

    def metrics_text(self) -> tuple[bytes, str]:
        """Prometheus exposition of all workers."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.local is not None:
            metrics = self.local.proxy.metrics
            metrics.flush()  # one process: the scrape sees every request answered so far
            return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._metrics_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _write_state(self) -> None:
        path = state_dir() / f"{self.config.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"name": self.config.name, "pid": os.getpid(), "host": self.config.host, "port": self.port,
                       "admin_url": self.admin_url, "secret": self.secret, "started_at": self.started_at}, f)
        os.replace(tmp, path)
        self._state_file = path


def parse_members(routes: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """The JSON table back into MemberSpecs (for clients of the admin API)."""
    return {r: [member_from_dict(m) for m in ms] for r, ms in routes.items()}
