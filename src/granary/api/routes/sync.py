"""The server side of an ``http(s)://`` remote: a bare repository that other sites push to and pull from.

The repository is the folder remote of :mod:`granary.store.sync.remote` (``GRANARY_SYNC_REPO``, default
``<home>/sync-repo``), so its guarantees are the folder remote's: objects appear only complete and checked
against their content address, refs move by compare-and-swap under a lock. Each call is authorised as the
calling principal: sending objects, records and refs needs ``write`` on the dataset, fetching needs ``list``
(the data's purposes are checked where it is read: the pulling store adopts the policy that travels with it).
A decision is audited once per principal, dataset and direction per :data:`DECISION_TTL_S` (a push of 10,000
objects is one audit record, not 10,000); every ref move is audited with its old and new version.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from granary.api.deps import Context, Ctx
from granary.api.problem import problem
from granary.errors import IntegrityError, NotFoundError, SyncError
from granary.store.gate import dataset_of_key
from granary.store.names import check_dataset_name, check_ref_name
from granary.store.sync.remote import Remote, RemoteRef
from granary.store.sync.transfer import ObjectCheck

router = APIRouter(prefix="/sync", tags=["sync"])
DECISION_TTL_S = 60.0
VERSION_ID = r"^[0-9a-f]{64}$"
_AUDITED = {"write": "sync.receive", "list": "sync.send", "forget": "sync.forget"}
_lock = threading.Lock()
_decide = threading.Lock()


class RefMove(BaseModel):
    """A compare-and-swap of a branch: move it to ``new`` if it still points at ``expected``."""

    expected: str | None = Field(None, pattern=VERSION_ID)
    new: str = Field(..., pattern=VERSION_ID)


def _repo(request: Request) -> Remote:
    state = request.app.state
    with _lock:
        repo = getattr(state, "granary_sync_repo", None)
        if repo is None:
            home = state.granary.settings.home
            repo = Remote(os.environ.get("GRANARY_SYNC_REPO") or str(Path(home) / "sync-repo"))
            state.granary_sync_repo = repo
            state.granary_sync_decisions = {}
        return repo


def _allow(request: Request, ctx: Context, action: str, dataset: str) -> None:
    """Authorise ``action`` on ``dataset`` for the caller; audit it once per :data:`DECISION_TTL_S`."""
    check_dataset_name(dataset)
    decisions: dict[tuple[str, str, str], float] = request.app.state.granary_sync_decisions
    key = (ctx.principal.name, action, dataset)
    with _decide:  # parallel transfers of one push wait for the first decision instead of each making one
        now = time.monotonic()
        if now - decisions.get(key, -DECISION_TTL_S) < DECISION_TTL_S:
            return
        ctx.guard.authorize(action, dataset, obj="sync")
        ctx.guard.record(_AUDITED[action], dataset, obj="sync")
        decisions[key] = now


@router.get("/datasets")
def datasets(request: Request, ctx: Ctx) -> list[str]:
    """Datasets the repository has records of (those the caller may list)."""
    repo = _repo(request)
    return [d for d in repo.datasets() if ctx.guard.allows("list", d)]


@router.get("/datasets/{dataset}")
def dataset_record(dataset: str, request: Request, ctx: Ctx) -> dict[str, Any]:
    """A dataset's record (kind, branch, description, the policy that travels with it)."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset)
    record = repo.dataset_record(dataset)
    if record is None:
        raise NotFoundError(f"the repository has no dataset {dataset!r}", hint="push it first")
    return record


@router.put("/datasets/{dataset}")
def put_dataset_record(dataset: str, record: dict[str, Any], request: Request, ctx: Ctx) -> dict[str, str]:
    """Write a dataset's record."""
    repo = _repo(request)
    _allow(request, ctx, "write", dataset)
    repo.put_dataset_record(dataset, record)
    return {"dataset": dataset}


@router.get("/objects")
def list_objects(request: Request, ctx: Ctx, prefix: str = Query(..., max_length=512)) -> dict[str, int]:
    """Every object under ``datasets/<dataset>`` (or deeper) with its size."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset_of_key(prefix.rstrip("/") + "/x"))
    return repo.list_objects(prefix)


def _object_path(repo: Remote, key: str) -> Path:
    ObjectCheck(key)  # refuses keys that are not content-addressed store keys (and so any path tricks)
    return Path(repo.object_path(key))


def _object_file(key: str, request: Request, ctx: Context) -> Path | None:
    repo = _repo(request)
    _allow(request, ctx, "list", dataset_of_key(key))
    path = _object_path(repo, key)
    return path if path.is_file() else None


def _missing(key: str) -> Response:
    return problem(404, "not-found", f"no object {key} in the repository")


@router.get("/objects/{key:path}", response_model=None)
def get_object(key: str, request: Request, ctx: Ctx) -> Response:
    """An object's bytes."""
    path = _object_file(key, request, ctx)
    return _missing(key) if path is None else FileResponse(path, media_type="application/octet-stream")


@router.head("/objects/{key:path}", response_model=None)
def has_object(key: str, request: Request, ctx: Ctx) -> Response:
    """Whether an object is there (200 with its size, or 404)."""
    path = _object_file(key, request, ctx)
    return _missing(key) if path is None else Response(headers={"Content-Length": str(path.stat().st_size)})


@router.put("/objects/{key:path}", status_code=201, response_model=None)
async def put_object(key: str, request: Request, ctx: Ctx) -> dict[str, Any] | Response:
    """Receive an object; it is kept only if its bytes hash to its key (else 422 and nothing appears)."""
    repo = _repo(request)
    await run_in_threadpool(_allow, request, ctx, "write", dataset_of_key(key))
    check = ObjectCheck(key)
    size = 0
    try:
        with repo.writer(key) as f:
            async for chunk in request.stream():
                check.update(chunk)
                await run_in_threadpool(f.write, chunk)
                size += len(chunk)
            check.finish()  # raising aborts the writer: the object never appears
    except IntegrityError as exc:
        return problem(422, "integrity", str(exc.args[0]), hint="the object was damaged in transit; send it again")
    return {"key": key, "bytes": size}


@router.delete("/objects/{key:path}")
def delete_object(key: str, request: Request, ctx: Ctx) -> dict[str, str]:
    """Delete an object: the data of a version a forget request expired (needs ``forget`` on the dataset)."""
    repo = _repo(request)
    _allow(request, ctx, "forget", dataset_of_key(key))
    _object_path(repo, key)
    repo.delete_object(key)
    return {"deleted": key}


@router.get("/audit/{dataset}")
def audit_sites(dataset: str, request: Request, ctx: Ctx) -> list[str]:
    """Keys of the audit segments of ``dataset`` pushed here (``<site>.<first seq>-<last seq>``)."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset)
    return repo.audit_sites(dataset)


@router.get("/audit/{dataset}/{site}", response_model=None)
def get_audit(dataset: str, site: str, request: Request, ctx: Ctx) -> Response:
    """One audit segment of ``dataset`` (zstd-compressed JSON lines; see granary.store.sync.audits)."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset)
    try:  # one read, not a listing per segment fetched (a pull fetches every segment it lacks)
        blob = repo.get_audit(dataset, site)
    except FileNotFoundError:
        return problem(404, "not-found", f"no audit segment {site} of {dataset}")
    return Response(blob, media_type="application/octet-stream")


@router.put("/audit/{dataset}/{site}")
async def put_audit(dataset: str, site: str, request: Request, ctx: Ctx) -> dict[str, str]:
    """Write one audit segment of ``dataset`` (sent by a push)."""
    repo = _repo(request)
    await run_in_threadpool(_allow, request, ctx, "write", dataset)
    blob = await request.body()
    await run_in_threadpool(repo.put_audit, dataset, site, blob)
    return {"dataset": dataset, "site": site}


@router.post("/flush")
def flush(request: Request, ctx: Ctx) -> dict[str, bool]:
    """Make every object received so far durable (before a ref that reaches them moves)."""
    _repo(request).flush()
    return {"flushed": True}


@router.get("/refs/{dataset}")
def branches(dataset: str, request: Request, ctx: Ctx) -> dict[str, str]:
    """Every branch of ``dataset`` in the repository and its version."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset)
    return repo.branches(dataset)


class TagCreate(BaseModel):
    """Create a tag (tags never move: an existing tag keeps its version, which the answer gives)."""

    version_id: str = Field(..., pattern=VERSION_ID)


@router.get("/tags/{dataset}")
def tags(dataset: str, request: Request, ctx: Ctx) -> dict[str, str]:
    """Every tag of ``dataset`` in the repository and its version."""
    repo = _repo(request)
    _allow(request, ctx, "list", dataset)
    return repo.tags(dataset)


@router.put("/tags/{dataset}/{tag}")
def create_tag(dataset: str, tag: str, body: TagCreate, request: Request, ctx: Ctx) -> dict[str, str]:
    """Create a tag at a version whose manifest is in the repository; returns the version the tag names."""
    repo = _repo(request)
    _allow(request, ctx, "write", dataset)
    if not repo.has_object(f"datasets/{dataset}/manifests/{body.version_id}.json"):
        raise SyncError(f"version {body.version_id[:12]} of {dataset} has no manifest in the repository",
                        hint="push the version before tagging it")
    named = repo.create_tag(dataset, tag, body.version_id)
    if named == body.version_id:
        ctx.guard.record("sync.tag", dataset, obj=tag, details={"version": named})
    return {"dataset": dataset, "tag": tag, "version_id": named}


@router.get("/refs/{dataset}/{branch:path}")
def read_ref(dataset: str, branch: str, request: Request, ctx: Ctx) -> dict[str, str | None]:
    """A branch's version and the token a compare-and-swap presents."""
    repo = _repo(request)
    check_ref_name(branch)
    _allow(request, ctx, "list", dataset)
    ref = repo.read_ref(dataset, branch)
    return {"version_id": ref.version_id, "token": ref.token}


@router.put("/refs/{dataset}/{branch:path}", response_model=None)
def move_ref(dataset: str, branch: str, move: RefMove, request: Request, ctx: Ctx) -> dict[str, Any] | Response:
    """Move a branch by compare-and-swap (409 with the branch's actual version when it moved meanwhile)."""
    repo = _repo(request)
    check_ref_name(branch)
    _allow(request, ctx, "write", dataset)
    if not repo.has_object(f"datasets/{dataset}/manifests/{move.new}.json"):
        raise SyncError(f"version {move.new[:12]} of {dataset} has no manifest in the repository",
                        hint="send its objects and manifest before moving the branch")
    try:
        repo.cas_ref(dataset, branch, expected=RemoteRef(move.expected, move.expected), new=move.new)
    except SyncError:
        actual = repo.read_ref(dataset, branch).version_id
        return JSONResponse({"title": "Conflict", "detail": f"{dataset}@{branch} moved", "actual": actual},
                            status_code=409)
    ctx.guard.record("sync.ref", dataset, obj=branch, details={"old": move.expected, "new": move.new})
    return {"dataset": dataset, "branch": branch, "version_id": move.new}
