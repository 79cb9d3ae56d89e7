"""Active health checks and load reports, run once in the supervisor and shared with every worker."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import aiohttp

from granary.serve.backend import LoadReport
from granary.serve.config import HealthConfig, RouteConfig
from granary.serve.table import BackendTable

log = logging.getLogger(__name__)

# vLLM (old and new names), SGLang and TGI gauges that tell how loaded an engine is
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)", re.M)


class HealthTracker:
    """Turns probe results into a verdict with hysteresis: ``unhealthy_threshold`` failures in a row mark a
    backend unhealthy, ``healthy_threshold`` successes in a row mark it healthy again.

    Args:
        config: the route's health settings.
        healthy: the starting verdict.
    """

    def __init__(self, config: HealthConfig, *, healthy: bool = True) -> None:
        self.config = config
        self.healthy = healthy
        self.streak = 0  # successes (> 0) or failures (< 0) in a row

    def record(self, ok: bool) -> bool:
        """Note a probe result; returns True when the verdict changed."""
        if ok:
            self.streak = self.streak + 1 if self.streak > 0 else 1
            if not self.healthy and self.streak >= self.config.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.streak = self.streak - 1 if self.streak < 0 else -1
            if self.healthy and -self.streak >= self.config.unhealthy_threshold:
                self.healthy = False
                return True
        return False


def parse_load(text: str, now: float) -> LoadReport | None:
    """A LoadReport from Prometheus text exposition (sums over label sets), or None if no engine gauge is there."""
    values: dict[str, float] = {}
    for name, _labels, value in _LINE.findall(text):
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    running, waiting, kv = first(_RUNNING), first(_WAITING), first(_KV)
    if running is None and waiting is None and kv is None:
        return None
    return LoadReport(running=running or 0.0, waiting=waiting or 0.0, kv_cache_usage=min(1.0, kv or 0.0), at=now)


class HealthChecker:
    """Probes every backend of every route on the route's interval; reports changes through ``on_change``.

    Args:
        table: the backend table (verdicts and load reports are written into it).
        routes: the routes.
        on_change: called after a verdict changed (the supervisor broadcasts the table).
        load_every: poll ``/metrics`` for load reports on routes using ``load_aware`` (or all routes when True).
    """

    def __init__(self, table: BackendTable, routes: tuple[RouteConfig, ...], *, on_change: Callable[[], None],
                 load_every: bool = False) -> None:
        self.table = table
        self.routes = routes
        self.on_change = on_change
        self.load_every = load_every
        self.trackers: dict[tuple[str, str, str], HealthTracker] = {}
        self.session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Probe until cancelled."""
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            await asyncio.gather(*(self._route_loop(r) for r in self.routes if r.health.enabled or self._loads(r)))
        finally:
            await self.session.close()

    def _loads(self, route: RouteConfig) -> bool:
        return self.load_every or route.policy == "load_aware"

    async def _route_loop(self, route: RouteConfig) -> None:
        while True:
            members = list(self.table.routes.get(route.name, {}).values())
            results = await asyncio.gather(*(self.probe(route, m.name, m.url) for m in members))
            changed = any(results)
            alive = {(route.name, m.name, m.url) for m in members}
            for key in [k for k in self.trackers if k[0] == route.name and k not in alive]:
                del self.trackers[key]
            if changed or self._loads(route):
                self.on_change()
            await asyncio.sleep(route.health.interval_s)

    async def probe(self, route: RouteConfig, name: str, url: str) -> bool:
        """Probe one backend (health, and load when asked); returns whether its verdict changed."""
        assert self.session is not None
        cfg = route.health
        changed = False
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        if cfg.enabled:
            try:
                async with self.session.get(url + cfg.path, timeout=timeout) as resp:
                    ok = 200 <= resp.status < 300
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                ok = False
            tracker = self.trackers.setdefault((route.name, name, url), HealthTracker(cfg))
            if tracker.record(ok):
                log.warning("backend %s of route %s is now %s", name, route.name,
                            "healthy" if tracker.healthy else "unhealthy")
                changed = self.table.set_healthy(route.name, name, tracker.healthy)
        if self._loads(route):
            try:
                async with self.session.get(url + "/metrics", timeout=timeout) as resp:
                    text = await resp.text() if resp.status == 200 else ""
            except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError):
                text = ""
            report = parse_load(text, time.monotonic()) if text else None
            if report is not None:
                self.table.set_load(route.name, name, report)
        return changed
