"""Gateway configuration: routes, backends and the knobs of health, retries, circuits and admission, from YAML."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from granary.serve.errors import GatewayConfigError, UnknownPolicyError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_WEIGHT = 10_000.0
SERVERS = ("lean", "aiohttp")


def check_weight(weight: object, where: str) -> float:
    """Return ``weight`` as a float in (0, MAX_WEIGHT], else raise GatewayConfigError naming ``where``."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
            or not 0 < weight <= MAX_WEIGHT:
        raise GatewayConfigError(where, f"must be a number in (0, {MAX_WEIGHT:g}], got {weight!r} "
                                        "(drain a backend to stop sending it traffic)")
    return float(weight)


def check_url(url: object, where: str) -> str:
    """Return ``url`` without a trailing slash if it is an http:// URL with a host and port."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        raise GatewayConfigError(where, f"must be a URL string, got {url!r}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise GatewayConfigError(where, f"must look like http://HOST:PORT[/prefix], got {url!r}")
    return url.rstrip("/")


@dataclass(kw_only=True, frozen=True)
class BackendConfig:
    """One model server.

    Attributes:
        name: unique within its route (``[A-Za-z0-9._:-]``, up to 64 characters); used as a metric label.
        url: ``http://host:port`` (an optional path prefix is prepended to forwarded paths).
        weight: relative share of traffic, in (0, 10000].
    """

    name: str
    url: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise GatewayConfigError("backend name", f"must match {NAME_RE.pattern}, got {self.name!r}")
        object.__setattr__(self, "url", check_url(self.url, f"backend {self.name}: url"))
        object.__setattr__(self, "weight", check_weight(self.weight, f"backend {self.name}: weight"))


@dataclass(kw_only=True, frozen=True)
class HealthConfig:
    """Active health checks (run once, in the supervisor, and shared with every worker).

    Attributes:
        path: the path probed with GET; a 2xx answer counts as a success.
        interval_s: seconds between probes of one backend.
        timeout_s: a probe that takes longer fails.
        healthy_threshold: consecutive successes that mark an unhealthy backend healthy.
        unhealthy_threshold: consecutive failures that mark a healthy backend unhealthy.
        enabled: turn active checks off (passive ejection still works).
    """

    path: str = "/health"
    interval_s: float = 1.0
    timeout_s: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    enabled: bool = True

    def __post_init__(self) -> None:
        _positive(self, "interval_s", "timeout_s", "healthy_threshold", "unhealthy_threshold")
        if not self.path.startswith("/"):
            raise GatewayConfigError("health.path", f"must start with '/', got {self.path!r}")


@dataclass(kw_only=True, frozen=True)
class OutlierConfig:
    """Passive outlier ejection from live traffic (per worker process).

    Attributes:
        consecutive_failures: connect errors, timeouts or 5xx in a row that eject a backend.
        base_ejection_s: the first ejection lasts this long; the n-th lasts n times as long.
        max_ejection_s: the longest ejection.
        max_ejected_percent: never eject more than this share of a route's backends.
        panic_threshold_percent: below this share of available backends, route to all of them (panic mode).
    """

    consecutive_failures: int = 3
    base_ejection_s: float = 2.0
    max_ejection_s: float = 60.0
    max_ejected_percent: float = 50.0
    panic_threshold_percent: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "consecutive_failures", "base_ejection_s", "max_ejection_s")
        for name in ("max_ejected_percent", "panic_threshold_percent"):
            if not 0 <= getattr(self, name) <= 100:
                raise GatewayConfigError(f"outlier.{name}", f"must be in [0, 100], got {getattr(self, name)}")


@dataclass(kw_only=True, frozen=True)
class RetryConfig:
    """Retries: only before the first response byte, or for idempotent methods on a retryable status.

    Attributes:
        attempts: total tries of one request (1 = no retry).
        budget_ratio: retries may add at most this share of the requests of the last ``budget_window_s``.
        min_retries_per_s: retries always allowed at this rate, whatever the ratio.
        budget_window_s: the window of the budget.
        retry_statuses: statuses that make an idempotent request retry on another backend.
    """

    attempts: int = 3
    budget_ratio: float = 0.2
    min_retries_per_s: float = 10.0
    budget_window_s: float = 10.0
    retry_statuses: tuple[int, ...] = (502, 503, 504)

    def __post_init__(self) -> None:
        _positive(self, "attempts", "budget_window_s")
        if self.budget_ratio < 0 or self.min_retries_per_s < 0:
            raise GatewayConfigError("retry.budget_ratio", "and retry.min_retries_per_s must be >= 0")
        object.__setattr__(self, "retry_statuses", tuple(int(s) for s in self.retry_statuses))


@dataclass(kw_only=True, frozen=True)
class CircuitConfig:
    """Circuit breaking per backend and per route.

    Attributes:
        max_concurrent: requests in flight to one backend; a full backend is skipped.
        max_pending: requests of the route waiting for a backend with room; more get 503.
        pending_timeout_s: a request waits at most this long for room, then gets 503.
    """

    max_concurrent: int = 1024
    max_pending: int = 1024
    pending_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _positive(self, "max_concurrent", "pending_timeout_s")
        if self.max_pending < 0:
            raise GatewayConfigError("circuit.max_pending", f"must be >= 0, got {self.max_pending}")


@dataclass(kw_only=True, frozen=True)
class TimeoutConfig:
    """Timeouts; a stream may run for hours as long as chunks keep coming.

    Attributes:
        connect_s: to open a connection to a backend.
        first_byte_s: from sending the request to the response headers (covers LLM prefill).
        idle_s: the longest silence between two chunks of a response body, either way (backend or client).
    """

    connect_s: float = 2.0
    first_byte_s: float = 60.0
    idle_s: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "connect_s", "first_byte_s", "idle_s")


@dataclass(kw_only=True, frozen=True)
class RouteConfig:
    """A set of backends behind one balancing policy, selected by model name or path prefix.

    Attributes:
        name: the route's name (a metric label).
        models: OpenAI ``model`` names served by this route (requests to ``/v1/...`` are routed by model).
        path_prefix: plain HTTP pass-through for paths under this prefix (any method, any body).
        policy: balancing policy (see ``granary.serve.balancers.POLICIES``).
        policy_params: keyword arguments of the policy.
        backends: the static backends.
        slow_start_s: a new or returning backend's weight ramps up over this window.
        drain_s: how long a removed backend keeps its in-flight requests before they are cut.
    """

    name: str
    models: tuple[str, ...] = ()
    path_prefix: str | None = None
    policy: str = "least_request"
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    backends: tuple[BackendConfig, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    slow_start_s: float = 10.0
    drain_s: float = 30.0

    def __post_init__(self) -> None:
        from granary.serve.balancers import POLICIES, make_balancer

        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise GatewayConfigError("route name", f"must match {NAME_RE.pattern}, got {self.name!r}")
        if not self.models and not self.path_prefix:
            raise GatewayConfigError(f"route {self.name}", "needs `models` or a `path_prefix`")
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise GatewayConfigError(f"route {self.name}: path_prefix",
                                     f"must start with '/', got {self.path_prefix!r}")
        if self.policy not in POLICIES:
            raise UnknownPolicyError(self.policy, sorted(POLICIES), field=f"route {self.name}: policy")
        try:
            make_balancer(self.policy, dict(self.policy_params))
        except (TypeError, ValueError) as exc:
            raise GatewayConfigError(f"route {self.name}: policy_params", f"are not valid for {self.policy}: {exc}"
                                     ) from exc
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise GatewayConfigError(f"route {self.name}: backends", f"repeat a name: {names}")
        if self.slow_start_s < 0 or self.drain_s < 0:
            raise GatewayConfigError(f"route {self.name}", "slow_start_s and drain_s must be >= 0")


@dataclass(kw_only=True, frozen=True)
class AdmissionConfig:
    """Admission control for the whole gateway (per worker process).

    Attributes:
        max_in_flight: requests proxied at once; more wait in the queue.
        max_queue: requests waiting; more are refused at once with 429.
        queue_timeout_s: a request that waited this long is refused with 503.
    """

    max_in_flight: int = 4096
    max_queue: int = 4096
    queue_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _positive(self, "max_in_flight", "queue_timeout_s")
        if self.max_queue < 0:
            raise GatewayConfigError("admission.max_queue", f"must be >= 0, got {self.max_queue}")


@dataclass(kw_only=True, frozen=True)
class GatewayConfig:
    """The whole gateway.

    Attributes:
        name: the gateway's name (its state file and CLI handle).
        host: address the data port listens on.
        port: the data port (0 picks a free one).
        workers: processes sharing the port with SO_REUSEPORT (0: one per core).
        admin_host: address of the admin and metrics listener (keep it on a private network).
        admin_port: its port (0 picks a free one).
        max_body_bytes: larger request bodies get 413.
        client_idle_s: a client that sends no body bytes for this long gets 408.
        access_log: a file for the JSON access log, ``-`` for stderr, or None.
        discovery_interval_s: how often serving jobs registered in the catalog are picked up (0: off).
        uvloop: use uvloop's event loop when installed.
        server: the HTTP path: ``lean`` (asyncio protocols and httptools on both sides, pooled keep-alive
            connections; the default) or ``aiohttp`` (aiohttp's server and client; same features, slower).
        routes: the routes, matched by model first, then by the longest path prefix.
    """

    name: str = "default"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    client_idle_s: float = 30.0
    access_log: str | None = None
    discovery_interval_s: float = 0.0
    uvloop: bool = True
    server: str = "lean"
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    routes: tuple[RouteConfig, ...] = ()

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise GatewayConfigError("name", f"must match {NAME_RE.pattern}, got {self.name!r}")
        for attr in ("port", "admin_port"):
            if not 0 <= getattr(self, attr) <= 65535:
                raise GatewayConfigError(attr, f"must be in [0, 65535], got {getattr(self, attr)}")
        if self.workers < 0:
            raise GatewayConfigError("workers", f"must be >= 0 (0: one per core), got {self.workers}")
        _positive(self, "max_body_bytes", "client_idle_s")
        if self.server not in SERVERS:
            raise GatewayConfigError("server", f"must be one of {', '.join(SERVERS)}, got {self.server!r}")
        if self.discovery_interval_s < 0:
            raise GatewayConfigError("discovery_interval_s", "must be >= 0")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise GatewayConfigError("routes", f"repeat a name: {names}")
        seen: dict[str, str] = {}
        for route in self.routes:
            for model in route.models:
                if model in seen:
                    raise GatewayConfigError("routes", f"serve the model {model!r} twice ({seen[model]}, {route.name})")
                seen[model] = route.name

    @property
    def num_workers(self) -> int:
        """Worker processes to run (``workers``, or the number of usable cores when 0)."""
        return self.workers or len(os.sched_getaffinity(0))

    def route(self, name: str) -> RouteConfig:
        """The route called ``name``."""
        for r in self.routes:
            if r.name == name:
                return r
        raise GatewayConfigError("route", f"{name!r} is not configured; routes: {[r.name for r in self.routes]}")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            section = type(obj).__name__.removesuffix("Config").lower()
            raise GatewayConfigError(f"{section}.{name}", f"must be a number > 0, got {value!r}")


_SECTIONS = {"health": HealthConfig, "outlier": OutlierConfig, "retry": RetryConfig, "circuit": CircuitConfig,
             "timeouts": TimeoutConfig}


def _build(cls: type, data: object, where: str, source: str | None) -> Any:
    if not isinstance(data, Mapping):
        raise GatewayConfigError(where, f"must be a mapping, got {type(data).__name__}", source=source)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GatewayConfigError(where, f"has unknown field(s) {unknown}; known: {sorted(known)}", source=source)
    try:
        return cls(**data)
    except GatewayConfigError as exc:
        if exc.source is None and source is not None:
            raise exc.located(source) from exc
        raise
    except TypeError as exc:
        raise GatewayConfigError(where, f"is malformed: {exc}", source=source) from exc


def route_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> RouteConfig:
    """Build a route from a YAML/JSON mapping (nested sections and backends included)."""
    if not isinstance(data, Mapping):
        raise GatewayConfigError("route", f"must be a mapping, got {type(data).__name__}", source=source)
    where = f"route {data.get('name', '?')}"
    item = dict(data)
    for key, cls in _SECTIONS.items():
        if key in item:
            item[key] = _build(cls, item[key], f"{where}: {key}", source)
    backends = item.get("backends") or []
    if not isinstance(backends, list):
        raise GatewayConfigError(f"{where}: backends", "must be a list", source=source)
    item["backends"] = tuple(_build(BackendConfig, b, f"{where}: backend", source) for b in backends)
    item["models"] = tuple(item.get("models") or ())
    item["policy_params"] = dict(item.get("policy_params") or {})
    return _build(RouteConfig, item, where, source)


def config_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> GatewayConfig:
    """Build a GatewayConfig from a mapping; errors name the source file and the field."""
    if not isinstance(data, Mapping):
        raise GatewayConfigError("config", "must be a mapping at the top level", source=source)
    item = dict(data)
    if "admission" in item:
        item["admission"] = _build(AdmissionConfig, item["admission"], "admission", source)
    routes = item.get("routes") or []
    if not isinstance(routes, list):
        raise GatewayConfigError("routes", "must be a list", source=source)
    item["routes"] = tuple(route_from_dict(r, source=source) for r in routes)
    return _build(GatewayConfig, item, "config", source)


def load_config(path: str | Path) -> GatewayConfig:
    """Read a gateway config from a YAML file.

    Raises:
        GatewayConfigError: unreadable YAML, an unknown field, a bad value or an unknown policy.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GatewayConfigError("config", f"cannot be read: {exc}", source=str(path)) from exc
    return config_from_dict(data or {}, source=str(path))
