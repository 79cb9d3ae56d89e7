"""The audit log and the verification of its hash chain (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from granary.api import rawsql
from granary.api.deps import Ctx
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.api.render import render_page
from granary.api.schemas import AuditEntry, AuditVerify

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEntry])
async def audit(ctx: Ctx, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE), cursor: str | None = None,
                principal: str | None = None, dataset: str | None = None, action: str | None = None,
                outcome: str | None = None) -> Response:
    """Audit records newest first, filtered by principal, dataset, action or outcome."""
    ctx.guard.authorize("audit", "*", obj="audit")
    key = decode_cursor(cursor, (int,))
    n = page_limit(limit)
    with ctx.raw.connection() as conn:
        rows = rawsql.audit_page(conn, filters={"principal": principal, "dataset": dataset, "action": action,
                                                "outcome": outcome}, before=key[0] if key else None, limit=n)
    nxt = encode_cursor([rows[-1]["seq"]]) if len(rows) == n else None
    return render_page(AuditEntry, rows, nxt)


@router.get("/verify", response_model=AuditVerify)
def verify(ctx: Ctx) -> AuditVerify:
    """Recompute the hash chain and check the signed checkpoints kept in the catalog; reports the first bad
    record (exported checkpoints are checked with `granary audit verify --checkpoints DIR`)."""
    from granary.secure.checkpoint import stored_checkpoints

    ctx.guard.authorize("audit", "*", obj="audit")
    report = ctx.guard.audit.verify(checkpoints=stored_checkpoints(ctx.guard.audit))
    ctx.guard.record("audit.verify", "*", obj="audit", outcome="ok" if report.ok else "error",
                     details={"records": report.records, "first_bad": report.first_bad})
    return AuditVerify(**report.__dict__)
