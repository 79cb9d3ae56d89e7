"""Recurring jobs: a job spec that the controller submits again every ``every_s`` seconds (backups, drills, evals).

A recurrence lives in the catalog (``sched_recurring``, migration ``recurring_0001``); the controller fires the
due ones at the start of each tick, in the same transaction that reads new jobs, so a recurrence fires at most
once per period whichever controller holds the lease. Runs missed while no controller ran are coalesced into
one (as a persistent systemd timer does): the next due time is the first multiple of the period after now.
With ``overlap: skip`` (the default) a period whose previous run is still pending or active is skipped and
counted, so a slow backup never piles up behind itself.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from granary.catalog import Catalog
from granary.errors import AlreadyExistsError, NotFoundError
from granary.sched import tables as t
from granary.sched.journal import insert_job
from granary.sched.model import TERMINAL, JobSpec

metadata = sa.MetaData()
recurring = sa.Table(  # frozen at migration recurring_0001
    "sched_recurring",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("every_s", sa.Float, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("overlap", sa.String(16), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("runs", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
    sa.Column("last_job_id", sa.String(64), nullable=True),
    sa.Column("last_fired_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
Overlap = Literal["skip", "allow"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MIN_EVERY_S = 1.0


def parse_every(text: str) -> float:
    """``30s``, ``15m``, ``6h``, ``1d``, ``1w`` or a number of seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"period {text!r} is not like 30s, 15m, 6h, 1d or 1w")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < MIN_EVERY_S:
        raise ValueError(f"period {text!r} is shorter than {MIN_EVERY_S:g} s")
    return seconds


def next_due(next_at: float, every_s: float, now: float) -> float:
    """The first due time after ``now`` on the grid ``next_at + k * every_s`` (k >= 1): missed runs coalesce."""
    if every_s <= 0:
        raise ValueError("every_s must be positive")
    k = max(1, math.floor((now - next_at) / every_s) + 1)
    return next_at + k * every_s


@dataclass(kw_only=True, frozen=True)
class Recurrence:
    """A recurring job as stored: its spec, period, next due time and what it has done."""

    name: str
    spec: JobSpec
    every_s: float
    next_at: float
    overlap: Overlap = "skip"
    enabled: bool = True
    runs: int = 0
    skipped: int = 0
    last_job_id: str | None = None
    last_fired_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "every_s": self.every_s, "next_at": self.next_at, "overlap": self.overlap,
                "enabled": self.enabled, "runs": self.runs, "skipped": self.skipped,
                "last_job_id": self.last_job_id, "last_fired_at": self.last_fired_at, "spec": self.spec.to_dict()}


def _from_row(row: Any) -> Recurrence:
    return Recurrence(name=row.name, spec=JobSpec.from_dict(json.loads(row.spec)), every_s=row.every_s,
                      next_at=row.next_at, overlap=row.overlap, enabled=bool(row.enabled), runs=row.runs,
                      skipped=row.skipped, last_job_id=row.last_job_id, last_fired_at=row.last_fired_at)


def add_recurring(catalog: Catalog, name: str, spec: JobSpec, *, every_s: float, start_at: float | None = None,
                  overlap: Overlap = "skip", replace: bool = False, now: float | None = None) -> Recurrence:
    """Record a recurring job; its first run is due at ``start_at`` (default: now)."""
    if not _NAME.match(name):
        raise ValueError(f"recurrence name {name!r} must start with a letter and hold only letters, digits, "
                         "'_', '.', '-' (at most 128)")
    if every_s < MIN_EVERY_S:
        raise ValueError(f"every_s must be at least {MIN_EVERY_S:g}, got {every_s}")
    if overlap not in ("skip", "allow"):
        raise ValueError(f"overlap must be 'skip' or 'allow', got {overlap!r}")
    now = time.time() if now is None else now
    rec = Recurrence(name=name, spec=spec, every_s=every_s, next_at=now if start_at is None else start_at,
                     overlap=overlap)
    with catalog.write() as conn:
        exists = conn.execute(sa.select(recurring.c.name).where(recurring.c.name == name)).first()
        if exists and not replace:
            raise AlreadyExistsError(f"recurring job {name!r} already exists",
                                     hint=f"remove it first (`granary schedule remove {name}`) or pick another name")
        if exists:
            conn.execute(recurring.delete().where(recurring.c.name == name))
        conn.execute(recurring.insert().values(
            name=name, spec=json.dumps(spec.to_dict()), every_s=every_s, next_at=rec.next_at, overlap=overlap,
            enabled=True, runs=0, skipped=0, last_job_id=None, last_fired_at=None, created_at=now))
    return rec


def list_recurring(catalog: Catalog) -> list[Recurrence]:
    with catalog.read() as conn:
        return [_from_row(r) for r in conn.execute(sa.select(recurring).order_by(recurring.c.name)).all()]


def remove_recurring(catalog: Catalog, name: str) -> None:
    """Stop and forget a recurrence (jobs it already submitted are not touched)."""
    with catalog.write() as conn:
        if not conn.execute(recurring.delete().where(recurring.c.name == name)).rowcount:
            raise NotFoundError(f"no recurring job named {name!r}", hint="list them with `granary schedule list`")


def set_enabled(catalog: Catalog, name: str, enabled: bool) -> None:
    """Pause or resume a recurrence."""
    with catalog.write() as conn:
        if not conn.execute(recurring.update().where(recurring.c.name == name).values(enabled=enabled)).rowcount:
            raise NotFoundError(f"no recurring job named {name!r}", hint="list them with `granary schedule list`")


def fire_due(conn: Connection, now: float) -> list[str]:
    """Submit a job for each enabled recurrence that is due (inside the controller's transaction); returns the
    new job ids."""
    due = conn.execute(sa.select(recurring).where(recurring.c.enabled.is_(True), recurring.c.next_at <= now)).all()
    fired: list[str] = []
    for row in due:
        rec = _from_row(row)
        values: dict[str, Any] = {"next_at": next_due(rec.next_at, rec.every_s, now)}
        if rec.overlap == "skip" and rec.last_job_id and _unfinished(conn, rec.last_job_id):
            values["skipped"] = rec.skipped + 1
        else:
            env = {**rec.spec.env, "GRANARY_RECURRING": rec.name}
            spec = JobSpec.from_dict({**rec.spec.to_dict(), "name": f"{rec.name}#{rec.runs + 1}", "env": env})
            job_id = insert_job(conn, spec, now=now)
            fired.append(job_id)
            values.update(runs=rec.runs + 1, last_job_id=job_id, last_fired_at=now)
        conn.execute(recurring.update().where(recurring.c.name == rec.name).values(**values))
    return fired


def _unfinished(conn: Connection, job_id: str) -> bool:
    state = conn.execute(sa.select(t.jobs.c.state).where(t.jobs.c.id == job_id)).scalar()
    return state is not None and state not in TERMINAL
