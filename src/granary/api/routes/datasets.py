"""Datasets, their branches and tags."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Query, Response

from granary.api import rawsql
from granary.api.access import visible_datasets
from granary.api.deps import Ctx
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.api.render import render, render_page
from granary.api.schemas import Dataset, DatasetDetail, NewRef, Ref, Version
from granary.errors import AlreadyExistsError

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.get("", response_model=Page[Dataset])
async def list_datasets(ctx: Ctx, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
                        cursor: str | None = None) -> Response:
    """Datasets the caller may see, by name. A page may hold fewer than ``limit`` items when some are hidden."""
    key = decode_cursor(cursor, (str,))
    n = page_limit(limit)
    with ctx.raw.connection() as conn:
        rows = rawsql.datasets_page(conn, after=key[0] if key else None, limit=n)
    allowed = visible_datasets(ctx.guard, [r["name"] for r in rows])
    nxt = encode_cursor([rows[-1]["name"]]) if len(rows) == n else None
    return render_page(Dataset, [r for r in rows if r["name"] in allowed], nxt)


@router.get("/{name}", response_model=DatasetDetail)
async def get_dataset(ctx: Ctx, name: str) -> Response:
    """A dataset, its branches and tags, how many versions it has and its governance policy."""
    ctx.guard.authorize("list", name)
    info = ctx.store.dataset(name)  # the store's read gate: authorised and audited as the caller
    with ctx.raw.connection() as conn:
        refs = rawsql.dataset_refs(conn, name)
        count = rawsql.count_versions(conn, name)
    head = next((r["version_id"] for r in refs if r["kind"] == "branch" and r["name"] == info.default_branch), None)
    return render(DatasetDetail, {**asdict(info), "head": head, "refs": refs, "num_versions": count,
                                  "policy": ctx.guard.policies.get(name).to_dict()})


@router.get("/{name}/versions", response_model=Page[Version])
async def list_versions(ctx: Ctx, name: str, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
                        cursor: str | None = None) -> Response:
    """A dataset's versions, newest first."""
    ctx.guard.authorize("list", name)
    ctx.store.dataset(name)
    key = decode_cursor(cursor, (float, str))
    n = page_limit(limit)
    with ctx.raw.connection() as conn:
        rows = rawsql.versions_page(conn, dataset=name, after=(key[0], key[1]) if key else None, limit=n)
    nxt = encode_cursor([rows[-1]["created_at"], rows[-1]["id"]]) if len(rows) == n else None
    return render_page(Version, rows, nxt)


def _refs(ctx: Ctx, name: str, kind: str) -> list[Ref]:
    ctx.guard.authorize("list", name)
    return [Ref(**asdict(r)) for r in ctx.store.refs(name, kind)]


@router.get("/{name}/branches", response_model=list[Ref])
def list_branches(ctx: Ctx, name: str) -> list[Ref]:
    """A dataset's branches."""
    return _refs(ctx, name, "branch")


@router.get("/{name}/tags", response_model=list[Ref])
def list_tags(ctx: Ctx, name: str) -> list[Ref]:
    """A dataset's tags."""
    return _refs(ctx, name, "tag")


def _create_ref(ctx: Ctx, name: str, body: NewRef, kind: str, response: Response) -> Ref:
    """Create a branch or tag; creating the same one again at the same version is a no-op (idempotent)."""
    target = ctx.store.resolve(body.ref if body.ref and "@" in body.ref else
                               f"{name}@{body.ref}" if body.ref else name)
    try:
        if kind == "branch":
            created = ctx.store.branch(name, body.name, from_ref=target.ref)
        else:
            created = ctx.store.tag(name, body.name, ref=target.ref)
    except AlreadyExistsError:
        existing = next((r for r in ctx.store.refs(name, kind) if r.name == body.name), None)
        if existing is None or existing.version_id != target.id:
            raise
        response.status_code = 200
        return Ref(**asdict(existing))
    response.status_code = 201
    return Ref(**asdict(created))


@router.post("/{name}/branches", response_model=Ref, status_code=201,
             responses={200: {"model": Ref, "description": "the branch already exists at that version"}})
def create_branch(ctx: Ctx, name: str, body: NewRef, response: Response) -> Ref:
    """Create a branch (writer role)."""
    return _create_ref(ctx, name, body, "branch", response)


@router.post("/{name}/tags", response_model=Ref, status_code=201,
             responses={200: {"model": Ref, "description": "the tag already exists at that version"}})
def create_tag(ctx: Ctx, name: str, body: NewRef, response: Response) -> Ref:
    """Create a tag (writer role); tags never move."""
    return _create_ref(ctx, name, body, "tag", response)
