"""Training runs: their checkpoints in the store, status, restarts, lineage and loss curve (granary.train's records).

A run is its ``checkpoint`` dataset; what the route shows of it comes through the request's store view (metadata
reads for the list and the detail; the loss curve, which is the run's output, as an audited read for a purpose),
and the run folder's logs (:mod:`granary.train.runs`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from granary.api import queries
from granary.api.access import visible_datasets
from granary.api.deps import Context, Ctx
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.api.schemas import CurvePoint, Run, RunCheckpoint, RunDetail, RunMetrics, RunRestart
from granary.api.state import AppState
from granary.errors import NotFoundError
from granary.store.manifest import Manifest
from granary.train.runs import loss_curve, read_run_files, run_folder, run_status

router = APIRouter(prefix="/runs", tags=["training"])
CHECKPOINTS_SHOWN = 200


@router.get("", response_model=Page[Run])
def list_runs(ctx: Ctx, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
              cursor: str | None = None) -> Page[Run]:
    """Training runs (checkpoint datasets) the caller may see, by name, with their newest checkpoint's step."""
    key = decode_cursor(cursor, (str,))
    n = page_limit(limit)
    rows = queries.runs_page(ctx.catalog, after=key[0] if key else None, limit=n)
    allowed = visible_datasets(ctx.guard, [r["name"] for r in rows])
    nxt = encode_cursor([rows[-1]["name"]]) if len(rows) == n else None
    return Page[Run](items=[Run(**r) for r in rows if r["name"] in allowed], next_cursor=nxt)


def _head(ctx: Context, name: str) -> Manifest:
    """The newest checkpoint of run ``name`` (a metadata read through the caller's view)."""
    info = ctx.store.dataset(name)
    if info.kind != "checkpoint":
        raise NotFoundError(f"{name} is a {info.kind} dataset, not a training run",
                            hint="runs are checkpoint datasets, named <run>-ckpt by default; see GET /runs")
    try:
        head = ctx.store.resolve(name)
    except NotFoundError:
        raise NotFoundError(f"training run {name} has no complete checkpoint yet",
                            hint="its first checkpoint is committed after checkpoint.every steps") from None
    return ctx.store.manifest(head)


@router.get("/{name}", response_model=RunDetail)
def run(ctx: Ctx, name: str, request: Request) -> RunDetail:
    """A run: status, step, data it trains on, its checkpoints, restarts and faults, and its lineage."""
    state: AppState = request.app.state.granary
    manifest = _head(ctx, name)
    meta: dict[str, Any] = dict(manifest.metadata)
    recipe: dict[str, Any] = dict(meta.get("recipe") or {})
    files = read_run_files(run_folder(meta, state.settings.home))
    step = int(meta.get("step", 0))
    steps = recipe.get("steps")
    rows = queries.versions_page(ctx.catalog, dataset=name, after=None, limit=CHECKPOINTS_SHOWN)
    checkpoints = [RunCheckpoint(id=r["id"], step=queries.checkpoint_step(r["message"]), created_at=r["created_at"],
                                 num_bytes=r["num_bytes"], state=r["state"]) for r in rows]
    return RunDetail(
        name=name, run=str(meta.get("run") or recipe.get("name") or name),
        status=run_status(step, steps if isinstance(steps, int) else None, files.updated_at),
        step=step, steps=steps if isinstance(steps, int) else None, world_size=meta.get("world_size"),
        parallel=(recipe.get("parallel") or {}).get("mode"), head=manifest.version_id,
        last_checkpoint_at=float(meta.get("saved_at") or manifest.created_at), last_logged_at=files.updated_at,
        run_dir=str(files.folder), data=dict(meta.get("data") or {}),
        lineage=dict(manifest.lineage), recipe=recipe, checkpoints=checkpoints,
        restarts=[RunRestart(**{k: r.get(k) for k in RunRestart.model_fields}) for r in files.restarts],
        faults=files.faults[-50:], last_metrics=files.metrics[-1] if files.metrics else {})


@router.get("/{name}/metrics", response_model=RunMetrics)
def run_metrics(ctx: Ctx, name: str, request: Request, points: int = Query(1000, ge=2, le=20_000),
                purpose: str | None = None) -> RunMetrics:
    """The run's curve: loss, grad norm, learning rate, tokens/s, step time (and eval loss), one point per step
    (the latest attempt's after a restart), thinned evenly to ``points``. The curve is the run's output, so it is
    read like its checkpoints: authorised for ``purpose`` and audited."""
    state: AppState = request.app.state.granary
    manifest = _head(ctx, name)
    # the read decision and its audit record
    ctx.store.bind(purpose=purpose).open_version(f"{name}@{manifest.version_id}")
    files = read_run_files(run_folder(dict(manifest.metadata), state.settings.home))
    curve = loss_curve(files.metrics, max_points=points)
    logged = len({r["step"] for r in files.metrics if isinstance(r.get("step"), int)})
    return RunMetrics(name=name, steps_logged=logged, points=[CurvePoint(**p) for p in curve])

