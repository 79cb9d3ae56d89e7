"""The endpoint registry in the catalog: serving jobs announce where their model server listens; gateways read it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.serve import tables as t
from granary.serve.config import NAME_RE, check_url, check_weight
from granary.serve.errors import GatewayConfigError


@dataclass(kw_only=True, frozen=True)
class Endpoint:
    """A registered model server.

    Attributes:
        model: the model it serves (the gateway routes it to the route serving that model).
        name: backend name, unique per model.
        url: ``http://host:port``.
        weight: its weight.
        job_id: the scheduler job running it, if any (the gateway drops it when the job ends).
        heartbeat_at: last time the registrant said it is alive.
        lease_s: the registration lapses this long after the last heartbeat.
    """

    model: str
    name: str
    url: str
    weight: float = 1.0
    job_id: str | None = None
    heartbeat_at: float = 0.0
    lease_s: float = 30.0

    def alive(self, now: float) -> bool:
        """Whether the lease still holds."""
        return now - self.heartbeat_at <= self.lease_s


class EndpointBook:
    """Register, renew and withdraw endpoints; list the live ones.

    Args:
        catalog: the catalog shared with the gateway (and the scheduler).
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def register(self, model: str, name: str, url: str, *, weight: float = 1.0, job_id: str | None = None,
                 lease_s: float = 30.0) -> Endpoint:
        """Add or replace an endpoint."""
        if not NAME_RE.fullmatch(name):
            raise GatewayConfigError("endpoint name", f"must match {NAME_RE.pattern}, got {name!r}")
        if not model or len(model) > 128:
            raise GatewayConfigError("endpoint model", f"must be 1-128 characters, got {model!r}")
        if not lease_s > 0:
            raise GatewayConfigError("endpoint lease_s", f"must be > 0, got {lease_s!r}")
        ep = Endpoint(model=model, name=name, url=check_url(url, "endpoint url"),
                      weight=check_weight(weight, "endpoint weight"), job_id=job_id, heartbeat_at=time.time(),
                      lease_s=lease_s)
        with self.catalog.write() as conn:
            conn.execute(t.endpoints.delete().where(t.endpoints.c.model == model, t.endpoints.c.name == name))
            conn.execute(t.endpoints.insert().values(model=model, name=name, url=ep.url, weight=ep.weight,
                                                     job_id=job_id, registered_at=ep.heartbeat_at,
                                                     heartbeat_at=ep.heartbeat_at, lease_s=lease_s))
        return ep

    def heartbeat(self, model: str, name: str) -> bool:
        """Renew the lease; returns False when the endpoint is no longer registered."""
        with self.catalog.write() as conn:
            n = conn.execute(t.endpoints.update().where(t.endpoints.c.model == model, t.endpoints.c.name == name)
                             .values(heartbeat_at=time.time())).rowcount
        return bool(n)

    def withdraw(self, model: str, name: str) -> bool:
        """Remove an endpoint; returns whether it was there."""
        with self.catalog.write() as conn:
            n = conn.execute(t.endpoints.delete().where(t.endpoints.c.model == model,
                                                        t.endpoints.c.name == name)).rowcount
        return bool(n)

    def all(self) -> list[Endpoint]:
        """Every registered endpoint, live or lapsed."""
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.endpoints).order_by(t.endpoints.c.model, t.endpoints.c.name)).all()
        return [Endpoint(model=r.model, name=r.name, url=r.url, weight=r.weight, job_id=r.job_id,
                         heartbeat_at=r.heartbeat_at, lease_s=r.lease_s) for r in rows]

    def live(self, now: float | None = None) -> list[Endpoint]:
        """Endpoints whose lease holds and whose job (if any) has not ended."""
        from granary.sched.serving import finished_jobs

        now = time.time() if now is None else now
        eps = [e for e in self.all() if e.alive(now)]
        ended = finished_jobs(self.catalog, [e.job_id for e in eps if e.job_id])
        return [e for e in eps if e.job_id not in ended]
