"""Lineage: the graph from a version back to the data it came from (parents, curation inputs, tokenization
inputs, raw files), walked through the versions' manifests."""

from __future__ import annotations

from collections import deque
from typing import Any

from fastapi import APIRouter, Query

from granary.api.deps import Context, Ctx
from granary.api.schemas import Lineage, LineageEdge, LineageNode
from granary.errors import NotFoundError
from granary.store.model import VersionInfo

router = APIRouter(tags=["lineage"])


def sources_of(lineage: dict[str, Any]) -> list[tuple[str, str]]:
    """``(version id or raw path, relation)`` pairs a version's lineage names as its inputs."""
    out: list[tuple[str, str]] = []
    for vid in lineage.get("inputs") or []:
        out.append((str(vid), lineage.get("command", "derived")))
    inp = lineage.get("input")
    if isinstance(inp, dict) and inp.get("input_version"):
        out.append((str(inp["input_version"]), "curated"))
    params = lineage.get("params")
    if isinstance(params, dict):
        out.extend((f"file:{p}", "ingested") for p in params.get("paths") or [] if isinstance(p, str))
    return out


def _node(v: VersionInfo) -> LineageNode:
    return LineageNode(id=v.id, dataset=v.dataset, kind=v.kind, label=f"{v.dataset}@{v.short_id}",
                       created_at=v.created_at, num_rows=v.num_rows, message=v.message)


def walk(ctx: Context, root: VersionInfo, max_nodes: int) -> Lineage:
    """Breadth-first from ``root`` towards its sources; versions the caller may not list are left out."""
    nodes: dict[str, LineageNode] = {root.id: _node(root)}
    edges: list[LineageEdge] = []
    queue = deque([root])
    truncated = False
    while queue:
        v = queue.popleft()
        manifest = ctx.store.manifest(v)
        links = [(p, "parent") for p in v.parents] + sources_of(manifest.lineage)
        for src, relation in links:
            if src.startswith("file:"):
                if src not in nodes:
                    nodes[src] = LineageNode(id=src, dataset="", kind="file", label=src[5:].rsplit("/", 1)[-1],
                                             created_at=None, num_rows=None, message=src[5:])
                edges.append(LineageEdge(source=src, target=v.id, relation=relation))
                continue
            if src not in nodes:
                if len(nodes) >= max_nodes:
                    truncated = True
                    continue
                try:
                    parent = ctx.store.resolve(f"{_dataset_of(ctx, src)}@{src}")
                    ctx.guard.authorize("list", parent.dataset)
                except (NotFoundError, PermissionError):
                    continue
                nodes[src] = _node(parent)
                queue.append(parent)
            edges.append(LineageEdge(source=src, target=v.id, relation=relation))
    return Lineage(root=root.id, nodes=list(nodes.values()), edges=edges, truncated=truncated)


def _dataset_of(ctx: Context, version_id: str) -> str:
    from granary.catalog.tables import versions

    with ctx.catalog.read() as conn:
        name = conn.execute(versions.select().with_only_columns(versions.c.dataset)
                            .where(versions.c.id == version_id)).scalar()
    if name is None:
        raise NotFoundError(f"version {version_id[:12]} is not in the catalog")
    return str(name)


@router.get("/lineage/{ref:path}", response_model=Lineage)
def lineage(ctx: Ctx, ref: str, max_nodes: int = Query(200, ge=1, le=2000)) -> Lineage:
    """Where a version came from: its parents and inputs back to raw files, up to ``max_nodes`` versions."""
    root = ctx.store.resolve(ref)
    ctx.guard.authorize("list", root.dataset)
    return walk(ctx, root, max_nodes)
