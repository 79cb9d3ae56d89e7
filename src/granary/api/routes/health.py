"""Health (no auth, for load balancers and systemd), who am I, and the dashboard's overview figures."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request

import granary
from granary.api import queries
from granary.api.deps import Ctx
from granary.api.schemas import Alert, DayCount, Health, Overview, Whoami
from granary.api.state import AppState
from granary.catalog import Catalog

router = APIRouter(tags=["health"])
OVERVIEW_DAYS = 30
MAX_ALERTS = 200
# The overview's figures aggregate whole tables (100,000 jobs grouped by state, every live version summed):
# computed at most once per OVERVIEW_TTL_S per tenant, by one request while the others wait for its answer.
OVERVIEW_TTL_S = 2.0


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    """Liveness and readiness: the catalog answers a query."""
    state: AppState = request.app.state.granary
    with state.catalog.read() as conn:
        conn.exec_driver_sql("SELECT 1")
    return Health(status="ok", version=granary.__version__, catalog=state.catalog.engine.dialect.name,
                  auth=state.server.auth)


@router.get("/whoami", response_model=Whoami)
def whoami(ctx: Ctx) -> Whoami:
    """The principal the request's token belongs to."""
    p = ctx.principal
    return Whoami(name=p.name, kind=p.kind, tenant=p.tenant, scopes=None if p.scopes is None else sorted(p.scopes),
                  clearances=sorted(p.clearances))


@router.get("/overview", response_model=Overview)
def overview(ctx: Ctx, request: Request) -> Overview:
    """Storage used, versions per day (30 days), jobs by state, GPUs in use, nodes by status, audit size, and the
    monitor's firing alerts (those about another tenant's jobs are left out for callers of one tenant). The
    figures other than the alerts are at most OVERVIEW_TTL_S old (aggregated once per period per tenant)."""
    ctx.guard.authorize("list", "*", obj="overview")
    state: AppState = request.app.state.granary
    tenant = None if ctx.principal.is_local_admin else ctx.principal.tenant
    now = time.time()
    since = (now // 86400 - OVERVIEW_DAYS + 1) * 86400
    with state.overview_lock:
        hit = state.overviews.get(tenant)
        if hit is None or time.monotonic() - hit[0] >= OVERVIEW_TTL_S:
            hit = (time.monotonic(), _figures(ctx, tenant, since))
            state.overviews[tenant] = hit
    return Overview(**hit[1], alerts=firing_alerts(ctx.catalog, tenant=tenant, now=now))


def _figures(ctx: Ctx, tenant: str | None, since: float) -> dict[str, Any]:
    """The overview's figures but its alerts; versions counted per UTC day of the last OVERVIEW_DAYS."""
    facts = queries.overview(ctx.catalog, since=since, tenant=tenant)
    per_day = Counter(int(t // 86400) for t in facts.pop("version_times"))
    first = int(since // 86400)
    facts["versions_per_day"] = [DayCount(day=time.strftime("%Y-%m-%d", time.gmtime((first + i) * 86400)),
                                          count=per_day.get(first + i, 0)) for i in range(OVERVIEW_DAYS)]
    return facts


def firing_alerts(catalog: Catalog, *, tenant: str | None, now: float) -> list[Alert]:
    """The monitor's firing events, critical first then newest; for a ``tenant``, only alerts about no job or
    about one of its jobs. Three queries, whatever the number of alerts."""
    from granary.monitor.events import EventLog

    log = EventLog(catalog)
    events = log.list(states=("firing",), limit=MAX_ALERTS)
    if tenant is not None:
        jobs = {e["labels"]["job"] for e in events if "job" in e["labels"]}
        mine = queries.jobs_of_tenant(catalog, jobs, tenant) if jobs else set()
        events = [e for e in events if "job" not in e["labels"] or e["labels"]["job"] in mine]
    silences = log.silences(now)
    out = [Alert(id=e["id"], detector=e["detector"], severity=e["severity"], summary=e["summary"],
                 labels={k: str(v) for k, v in e["labels"].items()}, starts_at=e["starts_at"],
                 updated_at=e["updated_at"], runbook=e["runbook"], action=e["action"],
                 silenced=EventLog.silenced(e["labels"], e["detector"], silences)) for e in events]
    rank = {"critical": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda a: (rank.get(a.severity, 3), -a.starts_at))
