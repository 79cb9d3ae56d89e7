"""One router module per resource; :data:`ROUTERS` lists them in matching order (``/versions/{ref}/report``
before the catch-all ``/versions/{ref}``, since a ref may hold slashes)."""

from __future__ import annotations

from granary.api.routes import (
    audit,
    datasets,
    diff,
    forget,
    gateway,
    health,
    jobs,
    lineage,
    models,
    nodes,
    reports,
    runs,
    sync,
    versions,
)

ROUTERS = (health.router, datasets.router, reports.router, versions.router, diff.router, lineage.router,
           jobs.router, runs.router, nodes.router, audit.router, forget.router, gateway.router, sync.router,
           models.router)
