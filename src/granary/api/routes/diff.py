"""The difference between two versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from granary.api.deps import Ctx

router = APIRouter(tags=["versions"])


@router.get("/diff", response_model=dict[str, Any])
def diff(ctx: Ctx, a: str = Query(..., max_length=300), b: str = Query(..., max_length=300),
         rows: bool = Query(False, description="compare rows too (reads both versions)")) -> dict[str, Any]:
    """Shards, schema (and with ``rows``, row counts) that differ between versions ``a`` and ``b``."""
    va, vb = ctx.store.resolve(a), ctx.store.resolve(b)
    for v in (va, vb):
        ctx.guard.authorize("read" if rows else "list", v.dataset)
    result = ctx.store.diff(va.ref, vb.ref, rows=rows)
    if rows:  # the diff read both versions' differing shards
        for v in (va, vb):
            ctx.store.hooks.record("read", v.dataset, version=v.id, details={"via": "diff"})
    out: dict[str, Any] = result.to_dict()
    return out
