"""Durable scheduler state in the catalog: submitting, listing and cancelling jobs, nodes, job history."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from granary.catalog import Catalog
from granary.sched import tables as t
from granary.sched.errors import JobNotFoundError, NodeNotFoundError, TransitionError
from granary.sched.model import TERMINAL, Job, JobSpec, NodeSpec


def new_job_id() -> str:
    """A short, sortable, unique job id (time prefix + random suffix)."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"


def submit_job(catalog: Catalog, spec: JobSpec, *, job_id: str | None = None, now: float | None = None) -> str:
    """Record a job for the controller to pick up; returns its id. Works while no controller runs."""
    with catalog.write() as conn:
        return insert_job(conn, spec, job_id=job_id, now=time.time() if now is None else now)


def insert_job(conn: Connection, spec: JobSpec, *, now: float, job_id: str | None = None) -> str:
    """:func:`submit_job` inside a caller's transaction (the controller firing a recurring job)."""
    job_id = job_id or new_job_id()
    for dep in spec.depends_on:
        if conn.execute(sa.select(t.jobs.c.id).where(t.jobs.c.id == dep)).first() is None:
            raise JobNotFoundError(dep)
    conn.execute(t.jobs.insert().values(
        id=job_id, name=spec.name, tenant=spec.tenant, spec=json.dumps(spec.to_dict()), state="pending",
        reason="submitted", accepted=False, cancel_requested=False, submit_time=now, attempt=0,
        node_restarts=0, job_restarts=0, preemptions=0, attained_gpu_s=0.0, run_s=0.0, not_before=0.0,
        resumed_step=None, first_start=None, finish_time=None, updated_at=now))
    return job_id


def request_cancel(catalog: Catalog, job_id: str) -> None:
    """Ask the controller to cancel a job (it stops a running one with SIGTERM and a grace period)."""
    with catalog.write() as conn:
        row = conn.execute(sa.select(t.jobs.c.state).where(t.jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(job_id)
        if row.state in TERMINAL:
            raise TransitionError(job_id, row.state, "cancelled")
        conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(cancel_requested=True))


def request_drain(catalog: Catalog, node: str, *, drained: bool = True) -> None:
    """Ask the controller to drain (or undrain) a node."""
    with catalog.write() as conn:
        res = conn.execute(t.nodes.update().where(t.nodes.c.name == node).values(drain_requested=drained))
        if res.rowcount == 0:
            raise NodeNotFoundError(node)


def _request(catalog: Catalog, kind: str, target: str, reason: str, requested_by: str,
             now: float | None) -> int:
    now = time.time() if now is None else now
    with catalog.write() as conn:
        if kind == "restart":
            if conn.execute(sa.select(t.jobs.c.id).where(t.jobs.c.id == target)).first() is None:
                raise JobNotFoundError(target)
        elif conn.execute(sa.select(t.nodes.c.name).where(t.nodes.c.name == target)).first() is None:
            raise NodeNotFoundError(target)
        pending = conn.execute(sa.select(t.requests.c.id).where(
            t.requests.c.kind == kind, t.requests.c.target == target, t.requests.c.state == "pending")).first()
        if pending is not None:  # one pending request per target: a detector firing every tick adds nothing
            return int(pending.id)
        res = conn.execute(t.requests.insert().values(
            kind=kind, target=target, reason=reason[:2000], requested_by=requested_by, requested_at=now,
            state="pending", outcome="", done_at=None))
        return _pk(res)


def request_restart(catalog: Catalog, job_id: str, reason: str, *, requested_by: str = "user",
                    now: float | None = None) -> int:
    """Ask the controller to stop a job and run it again from its latest checkpoint; returns the request id.

    The restart counts against the job's ``max_restarts``. A second request while one is pending returns
    the pending one's id.
    """
    return _request(catalog, "restart", job_id, reason, requested_by, now)


def request_evacuate(catalog: Catalog, node: str, reason: str, *, requested_by: str = "user",
                     now: float | None = None) -> int:
    """Ask the controller to drain a node and move its jobs elsewhere now; returns the request id."""
    return _request(catalog, "evacuate", node, reason, requested_by, now)


def list_requests(catalog: Catalog, *, states: tuple[str, ...] | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]:
    """Restart and evacuation requests, newest first."""
    q = sa.select(t.requests).order_by(t.requests.c.id.desc()).limit(limit)
    if states:
        q = q.where(t.requests.c.state.in_(states))
    with catalog.read() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


@dataclass(frozen=True)
class JobRow:
    """A job as stored (what `granary jobs` shows)."""

    id: str
    name: str
    tenant: str
    state: str
    reason: str
    attempt: int
    submit_time: float
    first_start: float | None
    finish_time: float | None
    resumed_step: int | None
    node_restarts: int
    job_restarts: int
    preemptions: int
    spec: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dict(self.__dict__)


def _job_row(row: Any) -> JobRow:
    return JobRow(id=row.id, name=row.name, tenant=row.tenant, state=row.state, reason=row.reason,
                  attempt=row.attempt, submit_time=row.submit_time, first_start=row.first_start,
                  finish_time=row.finish_time, resumed_step=row.resumed_step, node_restarts=row.node_restarts,
                  job_restarts=row.job_restarts, preemptions=row.preemptions, spec=json.loads(row.spec))


def list_jobs(catalog: Catalog, *, states: tuple[str, ...] | None = None, limit: int = 1000) -> list[JobRow]:
    """Jobs, newest first, optionally only in ``states``."""
    q = sa.select(t.jobs).order_by(t.jobs.c.submit_time.desc()).limit(limit)
    if states:
        q = q.where(t.jobs.c.state.in_(states))
    with catalog.read() as conn:
        return [_job_row(r) for r in conn.execute(q)]


def get_job(catalog: Catalog, job_id: str) -> tuple[JobRow, list[dict[str, Any]], list[dict[str, Any]]]:
    """A job, its event history and its attempts."""
    with catalog.read() as conn:
        row = conn.execute(sa.select(t.jobs).where(t.jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(job_id)
        evs = conn.execute(sa.select(t.events).where(t.events.c.job_id == job_id).order_by(t.events.c.seq))
        atts = conn.execute(sa.select(t.attempts).where(t.attempts.c.job_id == job_id)
                            .order_by(t.attempts.c.attempt, t.attempts.c.replica))
        return (_job_row(row), [dict(e._mapping) for e in evs], [dict(a._mapping) for a in atts])


def list_nodes(catalog: Catalog) -> list[dict[str, Any]]:
    """Registered nodes with their status and the GPUs in use."""
    with catalog.read() as conn:
        used: dict[str, int] = {}
        q = sa.select(t.attempts.c.node, t.attempts.c.gpu_ids).where(t.attempts.c.state.in_(t.ATTEMPT_OPEN))
        for node, ids in conn.execute(q):
            used[node] = used.get(node, 0) + len(json.loads(ids))
        out = []
        for r in conn.execute(sa.select(t.nodes).order_by(t.nodes.c.name)):
            d = dict(r._mapping)
            d["labels"], d["cached"] = json.loads(d["labels"]), json.loads(d["cached"])
            d["gpus_used"] = used.get(r.name, 0)
            out.append(d)
        return out


def register_node(conn: Connection, spec: NodeSpec, now: float, *, cached: list[str] | None = None) -> None:
    """Insert or refresh a node row (agents call this at start)."""
    values = dict(gpus=spec.gpus, cpus=spec.cpus, memory_bytes=spec.memory_bytes, labels=json.dumps(spec.labels),
                  last_heartbeat=now, utilization=0.0, cached=json.dumps(cached or []), agent_pid=os.getpid())
    res = conn.execute(t.nodes.update().where(t.nodes.c.name == spec.name).values(**values))
    if res.rowcount == 0:
        conn.execute(t.nodes.insert().values(name=spec.name, status="up", reason="registered",
                                             drain_requested=False, registered_at=now, **values))


def node_spec(row: Any) -> NodeSpec:
    """The NodeSpec of a node row."""
    return NodeSpec(name=row.name, gpus=row.gpus, cpus=row.cpus, memory_bytes=row.memory_bytes,
                    labels=json.loads(row.labels))


def job_from_row(row: Any) -> Job:
    """Rebuild a state-machine Job from its row (the controller's recovery path)."""
    spec = JobSpec.from_dict(json.loads(row.spec))
    return Job(id=row.id, spec=spec, submit_time=row.submit_time, state=row.state, attained_gpu_s=row.attained_gpu_s,
               run_s=row.run_s, first_start=row.first_start, finish_time=row.finish_time, attempt=row.attempt,
               node_restarts=row.node_restarts, job_restarts=row.job_restarts, preemptions=row.preemptions,
               not_before=row.not_before, pending_since=row.updated_at, resumed_step=row.resumed_step,
               reason=row.reason)


def job_values(job: Job, now: float) -> dict[str, Any]:
    """The row values that mirror a state-machine Job."""
    return dict(state=job.state, reason=job.reason, attempt=job.attempt, node_restarts=job.node_restarts,
                job_restarts=job.job_restarts, preemptions=job.preemptions, attained_gpu_s=job.attained_gpu_s,
                run_s=job.run_s, not_before=job.not_before, resumed_step=job.resumed_step,
                first_start=job.first_start, finish_time=job.finish_time, updated_at=now)


def _pk(result: sa.CursorResult[Any]) -> int:
    """The primary key of a one-row insert."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
