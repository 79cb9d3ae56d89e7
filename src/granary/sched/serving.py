"""What the gateway asks the scheduler about serving jobs: which of them are still alive."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.sched import tables as t
from granary.sched.model import TERMINAL


def finished_jobs(catalog: Catalog, job_ids: Iterable[str]) -> set[str]:
    """The ids among ``job_ids`` of jobs that ended (succeeded, failed, cancelled) or that do not exist."""
    ids = sorted(set(job_ids))
    if not ids:
        return set()
    with catalog.read() as conn:
        rows = conn.execute(sa.select(t.jobs.c.id, t.jobs.c.state).where(t.jobs.c.id.in_(ids))).all()
    alive = {r.id for r in rows if r.state not in TERMINAL}
    return set(ids) - alive
