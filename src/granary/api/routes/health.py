"""Health (no auth, for load balancers and systemd), who am I, and the dashboard's overview figures."""

from __future__ import annotations

import time
from collections import Counter

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
def overview(ctx: Ctx) -> Overview:
    """Storage used, versions per day (30 days), jobs by state, GPUs in use, nodes by status, audit size, and the
    monitor's firing alerts (those about another tenant's jobs are left out for callers of one tenant)."""
    ctx.guard.authorize("list", "*", obj="overview")
    now = time.time()
    since = (now // 86400 - OVERVIEW_DAYS + 1) * 86400
    tenant = None if ctx.principal.is_local_admin else ctx.principal.tenant
    facts = queries.overview(ctx.catalog, since=since, tenant=tenant)
    per_day = Counter(time.strftime("%Y-%m-%d", time.gmtime(t)) for t in facts.pop("version_times"))
    days = [time.strftime("%Y-%m-%d", time.gmtime(since + i * 86400)) for i in range(OVERVIEW_DAYS)]
    return Overview(**facts, versions_per_day=[DayCount(day=d, count=per_day.get(d, 0)) for d in days],
                    alerts=firing_alerts(ctx.catalog, tenant=tenant, now=now))


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
