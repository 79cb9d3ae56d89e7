"""Nodes of the scheduler: capacity, GPUs in use, health, drain state."""

from __future__ import annotations

from fastapi import APIRouter

from granary.api.deps import Ctx
from granary.api.schemas import Node
from granary.sched.journal import list_nodes

router = APIRouter(tags=["nodes"])


@router.get("/nodes", response_model=list[Node])
def nodes(ctx: Ctx) -> list[Node]:
    """Every registered node (two queries, whatever their number)."""
    ctx.guard.authorize("list", "*", obj="nodes")
    return [Node(**{k: v for k, v in n.items() if k in Node.model_fields}) for n in list_nodes(ctx.catalog)]
