"""The FastAPI application: the API under /api/v1, the dashboard under /ui, /metrics, and the OpenAPI document."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

import granary
from granary.api import problem
from granary.api.config import ServerSettings
from granary.api.middleware import METRICS_CONTENT_TYPE, ETagMiddleware, MetricsMiddleware, metrics_text
from granary.api.rawsql import RawReader
from granary.api.routes import ROUTERS
from granary.api.schemas import problem_responses
from granary.api.state import AppState
from granary.catalog import open_catalog
from granary.config import Settings
from granary.secure.guard import Guard
from granary.secure.hooks import SecureHooks
from granary.secure.settings import SecureSettings
from granary.store import Store

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
WEB_DIR = Path(__file__).with_name("web")
ROLE_CACHE_S = 1.0


def create_app(settings: Settings | None = None, server: ServerSettings | None = None) -> FastAPI:
    """Build the application over the store of ``settings`` (default: from the environment).

    Args:
        settings: where the catalog and objects are.
        server: how to listen and authenticate (default: from the environment).
    """
    settings = settings or Settings.from_env()
    server = server or ServerSettings.from_env()
    # up to as many connections as the threadpool has threads (40); 10 stay open. The list and detail routes run on
    # the event loop and use one at a time; past the old pool of 5, sync routes opened (on SQLite: re-tuned) one each
    catalog = open_catalog(settings.catalog_url, pool_size=10, max_overflow=30)
    secure = SecureSettings.from_env(settings.home)
    # requests never act as the server's own principal: each gets a view bound to its caller (granary.api.deps.bind);
    # the views' role books remember grants and rules for 1 s (role changes take effect within 1 s)
    guard = Guard(catalog, replace(secure, auth="local"), cache_s=ROLE_CACHE_S)
    store = Store(settings, hooks=SecureHooks(guard), catalog=catalog)
    state = AppState(settings=settings, server=server, secure=secure, catalog=catalog, store=store,
                     raw=RawReader(catalog))
    app = FastAPI(title="Granary", version=granary.__version__, openapi_url=f"{API_PREFIX}/openapi.json",
                  docs_url=f"{API_PREFIX}/docs", redoc_url=None, root_path=server.root_path,
                  description="Datasets, versions, lineage, curation reports, jobs, nodes, audit and the gateway "
                              "of a Granary installation. Lists page with `cursor`/`next_cursor`; errors are "
                              "application/problem+json.")
    app.state.granary = state
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=problem_responses())
    problem.install(app)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("ui/")

    app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")
    app.add_middleware(ETagMiddleware)
    if server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(server.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "If-None-Match"])
    app.add_middleware(MetricsMiddleware)
    return app
