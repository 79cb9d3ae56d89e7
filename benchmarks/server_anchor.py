"""The anchor of server_bench.py: a minimal FastAPI app that answers the same list and detail requests with
one catalog query each, serialised with json.dumps, no models, no authentication, no audit, no ETag, no
metrics: what a hand-written endpoint costs.

    GRANARY_CATALOG_URL=... uvicorn --factory benchmarks.server_anchor:app
"""

from __future__ import annotations

import json
import os
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import Response

from granary.catalog import open_catalog
from granary.catalog import tables as ct
from granary.sched import tables as st
from granary.secure import tables as sec


def app() -> FastAPI:
    catalog = open_catalog(os.environ["GRANARY_CATALOG_URL"])
    api = FastAPI()

    def rows(q: Any) -> list[dict[str, Any]]:
        with catalog.read() as conn:
            return [r._asdict() for r in conn.execute(q)]

    def send(body: dict[str, Any]) -> Response:  # json.dumps straight to bytes: no model, no encoder pass
        return Response(json.dumps(body, default=str), media_type="application/json")

    @api.get("/datasets")
    def datasets(limit: int = 50) -> Response:
        return send({"items": rows(sa.select(ct.datasets).order_by(ct.datasets.c.name).limit(limit))})

    @api.get("/datasets/{name}/versions")
    def versions(name: str, limit: int = 50) -> Response:
        v = ct.versions.c
        return send({"items": rows(sa.select(ct.versions).where(v.dataset == name)
                                   .order_by(v.created_at.desc(), v.id.desc()).limit(limit))})

    @api.get("/jobs")
    def jobs(limit: int = 50) -> Response:
        j = st.jobs.c
        items = rows(sa.select(j.id, j.name, j.tenant, j.state, j.reason, j.attempt, j.submit_time, j.first_start,
                               j.finish_time, j.spec).order_by(j.submit_time.desc(), j.id.desc()).limit(limit))
        for item in items:
            item["spec"] = json.loads(item["spec"])
        return send({"items": items})

    @api.get("/jobs/{job_id}")
    def job(job_id: str) -> Response:
        return send({"job": rows(sa.select(st.jobs).where(st.jobs.c.id == job_id))})

    @api.get("/audit")
    def audit(limit: int = 50) -> Response:
        return send({"items": rows(sa.select(sec.audit).order_by(sec.audit.c.seq.desc()).limit(limit))})

    return api
