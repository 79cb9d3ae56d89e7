"""One route's backends inside one worker: membership changes, drains, the choice of a backend, and outcomes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from granary.serve.backend import Backend, LoadReport
from granary.serve.balancers import Balancer, RequestInfo, make_balancer
from granary.serve.budget import RetryBudget
from granary.serve.config import BackendConfig, RouteConfig
from granary.serve.outlier import Outcome, OutlierDetector, available


@dataclass(kw_only=True, frozen=True)
class MemberSpec:
    """A backend as the supervisor announces it to workers (the shared, authoritative part of its state).

    Attributes:
        name: unique within the route.
        url: ``http://host:port``.
        weight: configured weight.
        draining: no new requests; in-flight ones finish.
        healthy: the verdict of the active health checks.
        source: ``config``, ``admin`` or ``job:<id>``.
        load: the backend's last load report, if any.
    """

    name: str
    url: str
    weight: float = 1.0
    draining: bool = False
    healthy: bool = True
    source: str = "config"
    load: LoadReport | None = None

    @classmethod
    def of(cls, b: BackendConfig, **extra: object) -> MemberSpec:
        """From a static backend of the config."""
        return cls(name=b.name, url=b.url, weight=b.weight, **extra)  # type: ignore[arg-type]


class RoutePool:
    """The backends of one route, its policy, outlier detector and retry budget (all per worker process).

    Args:
        route: the route's configuration.
        now: monotonic time (static backends start out of slow start).
        seed: seed of the policy's random choices (tests).
    """

    def __init__(self, route: RouteConfig, *, now: float, seed: int | None = None) -> None:
        self.route = route
        params = dict(route.policy_params)
        if seed is not None:
            params["seed"] = seed
        self.balancer: Balancer = make_balancer(route.policy, params)
        self.detector = OutlierDetector(route.outlier)
        self.budget = RetryBudget(ratio=route.retry.budget_ratio, min_per_s=route.retry.min_retries_per_s,
                                  window_s=route.retry.budget_window_s)
        self.members: dict[str, Backend] = {}
        self.removing: dict[str, float] = {}  # name -> time its in-flight requests are cut
        self.panic = False
        self._ejected: set[str] = set()
        self.apply([MemberSpec.of(b) for b in route.backends], now=now, initial=True)

    # -- membership (from the supervisor) -------------------------------------------------------------
    def apply(self, specs: Iterable[MemberSpec], *, now: float, initial: bool = False) -> None:
        """Make the members match ``specs``: add new ones (in slow start), re-weight, drain, and start removing
        the ones no longer listed (they drain for ``drain_s``, then go)."""
        specs = list(specs)
        listed = {s.name for s in specs}
        changed = False
        for s in specs:
            b = self.members.get(s.name)
            if b is None or b.url != s.url:
                start = now - self.route.slow_start_s if initial else now
                b = Backend(s.name, s.url, s.weight, now=start, slow_start_s=self.route.slow_start_s)
                self.members[s.name] = b
                changed = True
            elif b.weight != s.weight:
                b.weight = s.weight
                changed = True
            self.removing.pop(s.name, None)
            b.draining = s.draining
            self.set_health(s.name, s.healthy, now)
            b.load = s.load
        for name, b in self.members.items():
            if name not in listed and name not in self.removing:
                b.draining = True
                self.removing[name] = now + self.route.drain_s
        self.reap(now)
        if changed:
            self.balancer.update(list(self.members.values()))

    def reap(self, now: float) -> list[str]:
        """Delete removed backends whose requests have finished or whose drain time ran out; returns their names."""
        gone = [n for n, deadline in self.removing.items() if self.members[n].in_flight == 0 or now >= deadline]
        for n in gone:
            del self.removing[n]
            del self.members[n]
        if gone:
            self.balancer.update(list(self.members.values()))
        return gone

    def cut_deadline(self, backend: Backend) -> float:
        """When requests still running on a removed backend are cut (inf while it is a member)."""
        return self.removing.get(backend.name, math.inf) if self.members.get(backend.name) is backend else 0.0

    # -- choosing --------------------------------------------------------------------------------------
    def candidates(self, now: float, exclude: Sequence[Backend] = ()) -> tuple[list[Backend], bool]:
        """Backends that may take a request now (available, not tried yet, under ``max_concurrent``), and whether
        any backend is usable at all (False: 503 at once rather than waiting)."""
        limit = self.route.circuit.max_concurrent
        if not exclude and not self.panic:  # the common case in one pass: every member usable and with room
            members = self.members.values()
            fast = [b for b in members if b.active_healthy and not b.draining and now >= b.ejected_until
                    and b.in_flight < limit]
            if fast and len(fast) == len(members):
                return fast, True
        pool, self.panic = available(list(self.members.values()), now, self.route.outlier.panic_threshold_percent)
        usable = [b for b in pool if b not in exclude]
        return [b for b in usable if b.in_flight < limit], bool(usable)

    def choose(self, req: RequestInfo, now: float, exclude: Sequence[Backend] = ()) -> tuple[Backend | None, bool]:
        """A backend for ``req``; (None, True) when all usable backends are full, (None, False) when none is usable."""
        cands, usable = self.candidates(now, exclude)
        if not cands:
            return None, usable
        return self.balancer.pick(req, cands, now), True

    # -- outcomes --------------------------------------------------------------------------------------
    def started(self, b: Backend) -> None:
        """A request was sent to ``b``."""
        b.in_flight += 1
        b.requests += 1

    def finished(self, b: Backend, req: RequestInfo, outcome: Outcome, latency_s: float, now: float) -> bool:
        """A request on ``b`` ended; returns True when its outcome ejected ``b``."""
        b.in_flight -= 1
        self.balancer.on_done(b, req, ok=outcome == "ok", latency_s=latency_s, now=now)
        if outcome == "ok" and not b.consecutive_failures:  # the common case: nothing to count
            return False
        members = [m for m in self.members.values() if not m.draining]
        ejected = self.detector.record(b, outcome, members, now)
        if ejected:
            self._ejected.add(b.name)
        return ejected

    def returned_from_ejection(self, now: float) -> list[Backend]:
        """Backends whose ejection ended since the last call (they restart their slow start)."""
        if not self._ejected:
            return []
        back = self.detector.returned(list(self.members.values()), now, self._ejected)
        self._ejected -= {b.name for b in back}
        self._ejected &= set(self.members)
        return back

    def set_health(self, name: str, healthy: bool, now: float) -> None:
        """The active checks' verdict; a backend turning healthy again restarts its slow start."""
        b = self.members.get(name)
        if b is not None and b.active_healthy != healthy:
            b.active_healthy = healthy
            if healthy:
                b.added_at = now

    def set_load(self, reports: Mapping[str, LoadReport]) -> None:
        """Load reports from the backends' metrics."""
        for name, report in reports.items():
            b = self.members.get(name)
            if b is not None:
                b.load = report

    def snapshot(self, now: float) -> dict[str, object]:
        """A JSON-able view of the route in this worker."""
        return {"route": self.route.name, "policy": self.route.policy, "panic": self.panic,
                "backends": [b.snapshot(now) for b in self.members.values()]}
