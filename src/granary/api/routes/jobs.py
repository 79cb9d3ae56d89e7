"""Jobs (with their event history and attempts), queues, and cancelling a job."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse

from granary.api import queries, rawsql
from granary.api.deps import Context, Ctx
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.api.render import render, render_page
from granary.api.schemas import Accepted, Job, JobDetail, Queue
from granary.errors import AuthorizationError
from granary.sched.errors import JobNotFoundError
from granary.sched.journal import get_job, request_cancel

router = APIRouter(tags=["jobs"])
State = Literal["pending", "running", "succeeded", "failed", "cancelled"]
LOG_TAIL_BYTES = 64 * 1024


def tenant_scope(ctx: Context) -> str | None:
    """The tenant whose jobs the caller sees (None: all, for the local admin); needs the reader role there."""
    ctx.guard.authorize("list", "*", obj="jobs")
    return None if ctx.principal.is_local_admin else ctx.principal.tenant


def _check_tenant(ctx: Context, job_id: str, tenant: str) -> None:
    scope = tenant_scope(ctx)
    if scope is not None and tenant != scope:
        raise JobNotFoundError(job_id)  # another tenant's job does not exist for this caller


@router.get("/jobs", response_model=Page[Job])
async def list_jobs(ctx: Ctx, state: list[State] | None = Query(None),
                    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE), cursor: str | None = None) -> Response:
    """Jobs newest first (of the caller's tenant), optionally only in some states."""
    key = decode_cursor(cursor, (float, str))
    n = page_limit(limit)
    tenant = tenant_scope(ctx)
    with ctx.raw.connection() as conn:
        rows = rawsql.jobs_page(conn, tenant=tenant, states=state, after=(key[0], key[1]) if key else None,
                                limit=n)
    nxt = encode_cursor([rows[-1]["submit_time"], rows[-1]["id"]]) if len(rows) == n else None
    return render_page(Job, rows, nxt)


@router.get("/jobs/{job_id}", response_model=JobDetail)
async def job(ctx: Ctx, job_id: str) -> Response:
    """A job, its spec, why it is in its state, its event history and its attempts."""
    with ctx.raw.connection() as conn:
        found = rawsql.job_detail(conn, job_id)
    if found is None:
        raise JobNotFoundError(job_id)
    _check_tenant(ctx, job_id, found["tenant"])
    return render(JobDetail, found)


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}})
def job_logs(ctx: Ctx, job_id: str, attempt: int | None = Query(None, ge=0),
             replica: int = Query(0, ge=0)) -> PlainTextResponse:
    """The end (64 KiB) of a job's log (the latest attempt by default), when its log is on this machine."""
    row, _events, attempts = get_job(ctx.catalog, job_id)
    _check_tenant(ctx, job_id, row.tenant)
    mine = [a for a in attempts if a["replica"] == replica and (attempt is None or a["attempt"] == attempt)]
    if not mine or not mine[-1].get("log_path"):
        return PlainTextResponse("", status_code=200)
    try:
        with open(mine[-1]["log_path"], "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        text = f"(the log {mine[-1]['log_path']} is not readable from the server: {exc.strerror})"
    return PlainTextResponse(text)


@router.post("/jobs/{job_id}/cancel", response_model=Accepted, status_code=202)
def cancel(ctx: Ctx, job_id: str) -> Accepted:
    """Ask the scheduler to cancel a job (writer role on its tenant). Cancelling a cancelled job is a no-op."""
    row, _events, _attempts = get_job(ctx.catalog, job_id)
    _check_tenant(ctx, job_id, row.tenant)
    try:
        ctx.guard.authorize("write", "*", obj=f"job:{job_id}")
    except AuthorizationError as exc:
        who = ctx.principal.name
        raise AuthorizationError(f"{who} may not cancel job {job_id}: {str(exc.args[0]).split(': ', 1)[-1]}",
                                 hint=f"an admin can run `granary role grant {who} writer --tenant {row.tenant}`"
                                 ) from None
    if row.state == "cancelled":
        return Accepted(id=job_id, status="cancelled")
    request_cancel(ctx.catalog, job_id)
    ctx.guard.record("job.cancel", "*", obj=f"job:{job_id}", details={"state": row.state})
    return Accepted(id=job_id, status="cancel-requested")


@router.get("/queues", response_model=list[Queue])
def queues(ctx: Ctx) -> list[Queue]:
    """Pending and running jobs and their GPUs, per tenant."""
    return [Queue(**q) for q in queries.queues(ctx.catalog, tenant=tenant_scope(ctx))]


