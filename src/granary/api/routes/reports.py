"""Quality reports of curated versions (computed once per version through the store, then kept in memory)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from granary.api.deps import Ctx
from granary.api.state import AppState

router = APIRouter(tags=["curation"])
KEEP_REPORTS = 32


@router.get("/versions/{ref:path}/report", response_model=dict[str, Any])
def report(ctx: Ctx, ref: str, request: Request, purpose: str | None = None) -> dict[str, Any]:
    """The curation quality report of a documents version: lengths, languages, duplicates, PII, what each
    filter dropped, quarantine. Reading the version is authorised for ``purpose`` (default: the server's
    GRANARY_PURPOSE) and audited, every time, even when the report is cached."""
    from granary.curate.report.stats import report_for_version

    state: AppState = request.app.state.granary
    view = ctx.store.bind(purpose=purpose) if purpose is not None else ctx.store
    version = view.resolve(ref)
    view.open_version(version)  # the read decision and its audit record, every time
    with state.reports_lock:
        cached = state.reports.get(version.id)
    if cached is not None:
        return cached
    rep = report_for_version(view, version.ref)
    with state.reports_lock:
        state.reports[version.id] = rep
        while len(state.reports) > KEEP_REPORTS:
            state.reports.popitem(last=False)
    return rep
