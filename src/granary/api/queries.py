"""Catalog queries behind the runs, queues and overview endpoints (the hot lists and details: rawsql.py)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from granary.catalog import Catalog
from granary.catalog import tables as ct
from granary.sched import tables as st
from granary.secure import tables as sec


def versions_page(catalog: Catalog, *, dataset: str | None, after: tuple[float, str] | None,
                  limit: int) -> list[dict[str, Any]]:
    """Versions newest first (of one dataset, or of all), after the sort key ``(created_at, id)``."""
    v = ct.versions.c
    q = sa.select(ct.versions).order_by(v.created_at.desc(), v.id.desc()).limit(limit)
    if dataset is not None:
        q = q.where(v.dataset == dataset)
    if after is not None:
        q = q.where(sa.or_(v.created_at < after[0], sa.and_(v.created_at == after[0], v.id < after[1])))
    with catalog.read() as conn:
        return [{**row._asdict(), "parents": json.loads(row.parents)} for row in conn.execute(q)]


def runs_page(catalog: Catalog, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Checkpoint datasets (training runs) by name after ``after``, each with its head checkpoint and how many
    live checkpoints it has: one query (the step is the head's commit message, ``step N``)."""
    d, r, v = ct.datasets.c, ct.refs.c, ct.versions.c
    other = ct.versions.alias("ckpt")
    live = (sa.select(sa.func.count()).select_from(other)
            .where(other.c.dataset == d.name, other.c.state == "live").correlate(ct.datasets).scalar_subquery())
    q = (sa.select(d.name, d.description, d.created_at, r.version_id.label("head"), v.message, v.created_at
                   .label("last_checkpoint_at"), live.label("checkpoints"))
         .select_from(ct.datasets.outerjoin(ct.refs, sa.and_(r.dataset == d.name, r.kind == "branch",
                                                              r.name == d.default_branch))
                      .outerjoin(ct.versions, v.id == r.version_id))
         .where(d.kind == "checkpoint").order_by(d.name).limit(limit))
    if after is not None:
        q = q.where(d.name > after)
    with catalog.read() as conn:
        rows = [row._asdict() for row in conn.execute(q)]
    for row in rows:
        row["step"] = checkpoint_step(row.pop("message") or "")
    return rows


def checkpoint_step(message: str) -> int | None:
    """The step of a checkpoint version from its commit message (``step N``, see granary.train.checkpoint)."""
    word, _, number = message.partition(" ")
    return int(number) if word == "step" and number.isdigit() else None


def jobs_of_tenant(catalog: Catalog, job_ids: set[str], tenant: str) -> set[str]:
    """Which of ``job_ids`` belong to ``tenant`` (one query)."""
    j = st.jobs.c
    with catalog.read() as conn:
        return set(conn.execute(sa.select(j.id).where(j.id.in_(sorted(job_ids)), j.tenant == tenant)).scalars())


def gpus_of_spec(dialect: str) -> sa.ColumnElement[Any]:
    """SQL for a job's GPUs (gpus_per_replica x replicas) read from its JSON spec inside the database."""
    spec = st.jobs.c.spec
    per: sa.ColumnElement[Any]
    replicas: sa.ColumnElement[Any]
    if dialect == "postgresql":
        doc = sa.cast(spec, JSONB)
        per = sa.cast(doc["gpus_per_replica"].astext, sa.Integer)
        replicas = sa.cast(doc["replicas"].astext, sa.Integer)
    else:
        per = sa.func.json_extract(spec, "$.gpus_per_replica")
        replicas = sa.func.json_extract(spec, "$.replicas")
    return sa.func.coalesce(per, 0) * sa.func.coalesce(replicas, 1)


def queues(catalog: Catalog, *, tenant: str | None) -> list[dict[str, Any]]:
    """Pending and running jobs and their GPUs per tenant: one grouped query, summed inside the database."""
    j = st.jobs.c
    gpus = gpus_of_spec(catalog.engine.dialect.name)
    q = (sa.select(j.tenant, j.state, sa.func.count(), sa.func.coalesce(sa.func.sum(gpus), 0))
         .where(j.state.in_(("pending", "running"))).group_by(j.tenant, j.state))
    if tenant is not None:
        q = q.where(j.tenant == tenant)
    out: dict[str, dict[str, Any]] = {}
    with catalog.read() as conn:
        for name, state, count, gpu_sum in conn.execute(q):
            e = out.setdefault(name, {"tenant": name, "pending": 0, "running": 0, "gpus_pending": 0,
                                      "gpus_running": 0})
            e[state] = int(count)
            e[f"gpus_{state}"] = int(gpu_sum)
    return [out[k] for k in sorted(out)]


def overview(catalog: Catalog, *, since: float, tenant: str | None) -> dict[str, Any]:
    """The dashboard's front page figures, one query each."""
    v, j, n, a = ct.versions.c, st.jobs.c, st.nodes.c, sec.audit.c
    with catalog.read() as conn:
        datasets = conn.execute(sa.select(sa.func.count()).select_from(ct.datasets)).scalar() or 0
        nversions, storage = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(v.num_bytes), 0))
                                          .where(v.state == "live")).one()
        days = conn.execute(sa.select(v.created_at).where(v.created_at >= since)).scalars().all()
        jq = sa.select(j.state, sa.func.count()).group_by(j.state)
        if tenant is not None:
            jq = jq.where(j.tenant == tenant)
        jobs = {row[0]: int(row[1]) for row in conn.execute(jq)}
        nodes = {row[0]: int(row[1]) for row in conn.execute(sa.select(n.status, sa.func.count()).group_by(n.status))}
        gpus_total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(n.gpus), 0))
                                  .where(n.status == "up")).scalar() or 0
        open_ids = conn.execute(sa.select(st.attempts.c.gpu_ids)
                                .where(st.attempts.c.state.in_(st.ATTEMPT_OPEN))).scalars().all()
        audit = conn.execute(sa.select(sa.func.coalesce(sa.func.max(a.seq), 0))).scalar() or 0
    return {"datasets": int(datasets), "versions": int(nversions), "storage_bytes": int(storage),
            "version_times": list(days), "jobs": jobs, "nodes": nodes, "gpus_total": int(gpus_total),
            "gpus_used": sum(len(json.loads(ids)) for ids in open_ids), "audit_records": int(audit)}
