"""The inference gateway's model endpoints, as serving jobs registered them."""

from __future__ import annotations

import time
from dataclasses import asdict

from fastapi import APIRouter

from granary.api.deps import Ctx
from granary.api.schemas import GatewayEndpoint
from granary.serve.endpoints import EndpointBook

router = APIRouter(prefix="/gateway", tags=["gateway"])


@router.get("/endpoints", response_model=list[GatewayEndpoint])
def endpoints(ctx: Ctx) -> list[GatewayEndpoint]:
    """Every registered model endpoint and whether its lease still holds."""
    ctx.guard.authorize("list", "*", obj="gateway")
    now = time.time()
    return [GatewayEndpoint(**asdict(e), alive=e.alive(now)) for e in EndpointBook(ctx.catalog).all()]
