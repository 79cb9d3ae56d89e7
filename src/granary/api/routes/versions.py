"""Versions: the newest across datasets, one version's manifest facts, and a preview of its rows."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from granary.api import rawsql
from granary.api.access import visible_datasets
from granary.api.deps import Ctx
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.api.render import render_page
from granary.api.schemas import Preview, Samples, Version, VersionDetail
from granary.errors import StoreError

router = APIRouter(prefix="/versions", tags=["versions"])
PREVIEW_CHARS = 2000


@router.get("", response_model=Page[Version])
async def list_versions(ctx: Ctx, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
                        cursor: str | None = None) -> Response:
    """Versions of every dataset the caller may see, newest first."""
    key = decode_cursor(cursor, (float, str))
    n = page_limit(limit)
    with ctx.raw.connection() as conn:
        rows = rawsql.versions_page(conn, dataset=None, after=(key[0], key[1]) if key else None, limit=n)
    allowed = visible_datasets(ctx.guard, {r["dataset"] for r in rows})
    nxt = encode_cursor([rows[-1]["created_at"], rows[-1]["id"]]) if len(rows) == n else None
    return render_page(Version, [r for r in rows if r["dataset"] in allowed], nxt)


@router.get("/{ref:path}/preview", response_model=Preview)
def preview(ctx: Ctx, ref: str, limit: int = Query(20, ge=1, le=200), purpose: str | None = None) -> Preview:
    """The first rows of a documents version: a read, so authorised (with ``purpose``) and audited."""
    version = ctx.store.resolve(ref)
    if version.kind != "documents":
        raise StoreError(f"{version.dataset}@{version.short_id} is a tokens version; previews show documents",
                         hint="preview the documents version it was tokenized from (see its lineage)")
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    for batch in ctx.store.iter_batches(version, batch_rows=limit, purpose=purpose):
        columns = batch.schema.names
        rows.extend(_clip(r) for r in batch.to_pylist()[: limit - len(rows)])
        if len(rows) >= limit:
            break
    return Preview(version=version.id, columns=columns, rows=rows)


@router.get("/{ref:path}/samples", response_model=Samples)
def samples(ctx: Ctx, ref: str, seq_len: int = Query(64, ge=1, le=8192), count: int = Query(3, ge=1, le=32),
            shuffle: bool = False, seed: int = Query(0, ge=0, le=2**31 - 1),
            purpose: str | None = None) -> Samples:
    """The first samples the streaming loader would yield (``seq_len`` tokens each for a tokens version, rows for
    documents): the loader reads through the store, so the read is authorised with ``purpose`` and audited."""
    from granary.stream import StreamingDataset

    version = ctx.store.resolve(ref)
    tokens = version.kind == "tokens"
    ds = StreamingDataset(version.ref, batch_size=count, seq_len=seq_len if tokens else None, seed=seed,
                          shuffle=shuffle, store=ctx.store, output="numpy", num_threads=0, rank=0, world_size=1,
                          purpose=purpose)
    batch = next(iter(ds), None)
    if batch is None:
        rows: list[dict[str, Any]] = []
    elif tokens:
        rows = [{"tokens": [int(x) for x in t]} for t in batch["tokens"]]
    else:
        rows = [_clip(dict(r)) for r in batch]
    return Samples(version=version.id, kind=version.kind, samples_per_epoch=int(ds.num_samples), samples=rows)


def _clip(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and len(v) > PREVIEW_CHARS:
            v = v[:PREVIEW_CHARS] + "…"
        elif isinstance(v, bytes):
            v = f"<{len(v)} bytes>"
        out[k] = v
    return out


@router.get("/{ref:path}", response_model=VersionDetail)
def get_version(ctx: Ctx, ref: str) -> VersionDetail:
    """A version (``name``, ``name@branch``, ``name@tag`` or ``name@<id prefix>``): stats, schema, lineage."""
    version = ctx.store.resolve(ref)
    ctx.guard.authorize("list", version.dataset)
    manifest = ctx.store.manifest(version)
    schema = manifest.schema
    fields = None if schema is None else [{"name": f.name, "type": str(f.type)} for f in schema]
    d = version.to_dict()
    d.pop("manifest_key")
    return VersionDetail(**d, schema=fields, lineage=manifest.lineage, metadata=manifest.metadata,
                         side_tables=sorted(manifest.tables))
