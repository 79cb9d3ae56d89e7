"""The supervisor's authoritative backend table: static, admin-added and job-registered backends of every route."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from granary.serve.backend import LoadReport
from granary.serve.config import BackendConfig, GatewayConfig, check_url, check_weight
from granary.serve.errors import BackendNotFoundError, GatewayConfigError
from granary.serve.pool import MemberSpec


class BackendTable:
    """Every route's members as the supervisor knows them; workers get a copy after each change.

    Static backends come from the config, others from the admin API or from serving jobs registered in the
    catalog. Active health verdicts and load reports are folded in here, so all workers share them.

    Args:
        config: the gateway configuration.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.routes: dict[str, dict[str, MemberSpec]] = {
            r.name: {b.name: MemberSpec.of(b) for b in r.backends} for r in config.routes}
        self.version = 0

    def _route(self, route: str) -> dict[str, MemberSpec]:
        try:
            return self.routes[route]
        except KeyError:
            raise GatewayConfigError("route", f"{route!r} is not configured; routes: {sorted(self.routes)}") from None

    def _member(self, route: str, name: str) -> MemberSpec:
        member = self._route(route).get(name)
        if member is None:
            raise BackendNotFoundError(name, route)
        return member

    def _put(self, route: str, member: MemberSpec) -> MemberSpec:
        self.routes[route][member.name] = member
        self.version += 1
        return member

    def add(self, route: str, name: str, url: str, weight: float = 1.0, *, source: str = "admin") -> MemberSpec:
        """Add a backend (or replace one of the same name); it enters in slow start."""
        spec = BackendConfig(name=name, url=url, weight=weight)  # validates name, URL and weight
        self._route(route)
        return self._put(route, MemberSpec(name=spec.name, url=spec.url, weight=spec.weight, source=source))

    def remove(self, route: str, name: str) -> MemberSpec:
        """Remove a backend; workers drain it for the route's ``drain_s``."""
        member = self._member(route, name)
        del self.routes[route][name]
        self.version += 1
        return member

    def set_weight(self, route: str, name: str, weight: float) -> MemberSpec:
        """Change a backend's weight."""
        weight = check_weight(weight, f"backend {name}: weight")
        return self._put(route, dataclasses.replace(self._member(route, name), weight=weight))

    def set_draining(self, route: str, name: str, draining: bool = True) -> MemberSpec:
        """Stop (or resume) sending new requests to a backend; in-flight ones finish."""
        return self._put(route, dataclasses.replace(self._member(route, name), draining=draining))

    def set_healthy(self, route: str, name: str, healthy: bool) -> bool:
        """Record an active health verdict; returns whether it changed."""
        member = self.routes.get(route, {}).get(name)
        if member is None or member.healthy == healthy:
            return False
        self._put(route, dataclasses.replace(member, healthy=healthy))
        return True

    def set_load(self, route: str, name: str, load: LoadReport) -> None:
        """Record a load report (no version bump: reports travel with the next broadcast)."""
        member = self.routes.get(route, {}).get(name)
        if member is not None:
            self.routes[route][name] = dataclasses.replace(member, load=load)

    def sync_source(self, source_prefix: str, wanted: Mapping[str, Sequence[tuple[str, str, float, str]]]) -> bool:
        """Make the members whose source starts with ``source_prefix`` match ``wanted``
        ({route: [(name, url, weight, source)]}); returns whether anything changed."""
        changed = False
        for route, members in self.routes.items():
            want = {w[0]: w for w in wanted.get(route, ())}
            for name in [n for n, m in members.items() if m.source.startswith(source_prefix) and n not in want]:
                del members[name]
                changed = True
            for name, (_, url, weight, source) in want.items():
                cur = members.get(name)
                if cur is not None and not cur.source.startswith(source_prefix):
                    continue  # a static or admin backend of that name wins
                url = check_url(url, f"endpoint {name}: url")
                if cur is None or cur.url != url or cur.weight != weight:
                    members[name] = MemberSpec(name=name, url=url, weight=weight, source=source,
                                               healthy=cur.healthy if cur else True)
                    changed = True
        if changed:
            self.version += 1
        return changed

    def route_for_model(self, model: str) -> str | None:
        """The route serving ``model``."""
        for r in self.config.routes:
            if model in r.models:
                return r.name
        return None

    def snapshot(self) -> dict[str, list[MemberSpec]]:
        """Every route's members."""
        return {route: list(members.values()) for route, members in self.routes.items()}

    def to_json(self) -> dict[str, list[dict[str, object]]]:
        """The table in the JSON form sent to workers and shown by the admin API."""
        out: dict[str, list[dict[str, object]]] = {}
        for route, members in self.routes.items():
            out[route] = [{**dataclasses.asdict(m), "load": None if m.load is None else dataclasses.asdict(m.load)}
                          for m in members.values()]
        return out
