"""Discovery: the supervisor polls the endpoint registry and folds live endpoints into its backend table."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from granary.errors import GranaryError

if TYPE_CHECKING:
    from granary.serve.endpoints import Endpoint
    from granary.serve.gateway import Gateway

log = logging.getLogger(__name__)
SOURCE = "catalog"


def wanted_members(gateway: Gateway, endpoints: list[Endpoint]) -> dict[str, list[tuple[str, str, float, str]]]:
    """Endpoints grouped by the route that serves their model (endpoints of unknown models are skipped)."""
    out: dict[str, list[tuple[str, str, float, str]]] = {}
    for ep in endpoints:
        route = gateway.table.route_for_model(ep.model)
        if route is None:
            continue
        source = f"{SOURCE}:job:{ep.job_id}" if ep.job_id else SOURCE
        out.setdefault(route, []).append((ep.name, ep.url, ep.weight, source))
    return out


async def discovery_loop(gateway: Gateway) -> None:
    """Every ``discovery_interval_s``: read live endpoints, update the table, broadcast when it changed."""
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.serve.endpoints import EndpointBook

    url = gateway.catalog_url or Settings.from_env().catalog_url
    book = EndpointBook(await asyncio.to_thread(open_catalog, url))
    interval = gateway.config.discovery_interval_s
    warned = False
    while True:
        try:
            endpoints = await asyncio.to_thread(book.live)
        except (GranaryError, SQLAlchemyError, OSError) as exc:  # catalog briefly unreachable: keep the table
            if not warned:
                log.warning("endpoint discovery failed (keeping the current backends): %s", exc)
                warned = True
        else:
            warned = False
            if gateway.table.sync_source(SOURCE, wanted_members(gateway, endpoints)):
                log.info("discovered endpoints changed: %s", [(e.model, e.name) for e in endpoints])
                gateway.broadcast()
        await asyncio.sleep(interval)
