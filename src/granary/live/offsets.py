"""Reading and compare-and-swap updating of consumer offsets in the catalog."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from granary.catalog import Catalog
from granary.live.errors import OffsetConflictError
from granary.live.tables import offsets


@dataclass(frozen=True)
class Offset:
    """Where a source stands for one dataset branch: the last position committed and records so far."""

    source: str
    dataset: str
    branch: str
    position: str
    records: int
    version_id: str | None
    updated_at: float


def read_offset(catalog: Catalog, source: str, dataset: str, branch: str) -> Offset | None:
    """The committed offset of ``source`` into ``dataset@branch``, or None before the first commit."""
    with catalog.read() as conn:
        row = conn.execute(sa.select(offsets).where(offsets.c.source == source, offsets.c.dataset == dataset,
                                                    offsets.c.branch == branch)).first()
    if row is None:
        return None
    return Offset(row.source, row.dataset, row.branch, row.position, int(row.records), row.version_id,
                  float(row.updated_at))


def list_offsets(catalog: Catalog, dataset: str | None = None) -> list[Offset]:
    """Every recorded offset (of one dataset, or all)."""
    query = sa.select(offsets).order_by(offsets.c.dataset, offsets.c.source)
    if dataset is not None:
        query = query.where(offsets.c.dataset == dataset)
    with catalog.read() as conn:
        return [Offset(r.source, r.dataset, r.branch, r.position, int(r.records), r.version_id, float(r.updated_at))
                for r in conn.execute(query)]


def advance(conn: Connection, *, source: str, dataset: str, branch: str, expected: str | None, position: str,
            records: int, version_id: str | None) -> None:
    """Move an offset from ``expected`` to ``position`` inside the caller's transaction (compare-and-swap).

    Raises:
        OffsetConflictError: another ingester moved the offset since ``expected`` was read; the caller's
            transaction (and so its commit) must roll back.
    """
    now = time.time()
    key = (offsets.c.source == source) & (offsets.c.dataset == dataset) & (offsets.c.branch == branch)
    if expected is None:
        found = conn.execute(sa.select(offsets.c.position).where(key)).first()
        if found is not None:
            raise OffsetConflictError(source, dataset, expected, found.position)
        conn.execute(offsets.insert().values(source=source, dataset=dataset, branch=branch, position=position,
                                             records=records, version_id=version_id, updated_at=now))
        return
    done = conn.execute(offsets.update().where(key & (offsets.c.position == expected))
                        .values(position=position, records=offsets.c.records + records, version_id=version_id,
                                updated_at=now))
    if done.rowcount != 1:
        found = conn.execute(sa.select(offsets.c.position).where(key)).first()
        raise OffsetConflictError(source, dataset, expected, found.position if found else None)
