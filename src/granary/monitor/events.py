"""Detection events in the catalog: fire, update, resolve, list; silences that mute notifications."""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.monitor import tables as t
from granary.monitor.series import label_key

Severity = Literal["critical", "warning", "info"]
RUNBOOK = "docs/watch.md#"


@dataclass(frozen=True)
class Finding:
    """What a detector or rule found.

    Attributes:
        detector: the detector or rule name (``stall``, ``xid``, ...).
        severity: critical, warning or info.
        labels: bounded labels saying where (job, rank, node, gpu, mount).
        summary: one line for people.
        evidence: the numbers behind it (JSON-able).
        action: what the watcher asks the scheduler for: ``restart`` (the job) or ``evacuate`` (the node).
    """

    detector: str
    severity: Severity
    labels: dict[str, str]
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    action: Literal["restart", "evacuate"] | None = None

    @property
    def fingerprint(self) -> str:
        """Stable identity of the condition (detector + labels)."""
        return hashlib.sha1(f"{self.detector}|{label_key(self.labels)}".encode()).hexdigest()[:16]

    @property
    def runbook(self) -> str:
        """Where the docs say what to do."""
        return RUNBOOK + self.detector


class EventLog:
    """The ``monitor_events`` and ``monitor_silences`` tables.

    Args:
        catalog: the catalog.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def sync(self, findings: Iterable[Finding], now: float, *, actions: Mapping[str, str] | None = None,
             scope: Iterable[str] | None = None) -> tuple[list[int], list[int]]:
        """Record the findings firing now and resolve firing events no longer found.

        Args:
            findings: what fires now.
            now: the evaluation time.
            actions: fingerprint -> what was done about it (stored with the event).
            scope: detectors evaluated this round (only their events may be resolved); None: all.

        Returns:
            ids of new events, ids of events resolved.
        """
        current = {f.fingerprint: f for f in findings}
        actions = actions or {}
        new_ids: builtins.list[int] = []
        resolved: builtins.list[int] = []
        with self.catalog.write() as conn:
            firing = {r.fingerprint: r for r in conn.execute(sa.select(t.events).where(t.events.c.state == "firing"))}
            for fp, f in current.items():
                ev = json.dumps(f.evidence, default=str)[:20000]
                if fp in firing:
                    values: dict[str, Any] = dict(updated_at=now, evidence=ev, summary=f.summary)
                    if fp in actions:
                        values["action"] = actions[fp]
                    conn.execute(t.events.update().where(t.events.c.id == firing[fp].id).values(**values))
                    continue
                res = conn.execute(t.events.insert().values(
                    fingerprint=fp, detector=f.detector, severity=f.severity, state="firing",
                    labels=label_key(f.labels), summary=f.summary, evidence=ev, runbook=f.runbook,
                    action=actions.get(fp, ""), starts_at=now, updated_at=now, ends_at=None, notified_at=None))
                new_ids.append(_pk(res))
            allowed = None if scope is None else set(scope)
            for fp, row in firing.items():
                if fp not in current and (allowed is None or row.detector in allowed):
                    conn.execute(t.events.update().where(t.events.c.id == row.id).values(
                        state="resolved", ends_at=now, updated_at=now))
                    resolved.append(int(row.id))
        return new_ids, resolved

    def list(self, *, states: tuple[str, ...] | None = None, since: float | None = None,
             limit: int = 500) -> builtins.list[dict[str, Any]]:
        """Events, newest first."""
        q = sa.select(t.events).order_by(t.events.c.id.desc()).limit(limit)
        if states:
            q = q.where(t.events.c.state.in_(states))
        if since is not None:
            q = q.where(t.events.c.updated_at >= since)
        with self.catalog.read() as conn:
            out = []
            for r in conn.execute(q):
                d = dict(r._mapping)
                d["labels"], d["evidence"] = json.loads(d["labels"]), json.loads(d["evidence"])
                out.append(d)
            return out

    def mark_notified(self, ids: Iterable[int], now: float) -> None:
        """Record that events were sent."""
        ids = list(ids)
        if ids:
            with self.catalog.write() as conn:
                conn.execute(t.events.update().where(t.events.c.id.in_(ids)).values(notified_at=now))

    # ----------------------------------------------------------------- silences
    def silence(self, matchers: Mapping[str, str], duration_s: float, *, created_by: str = "user",
                comment: str = "", now: float | None = None) -> int:
        """Mute notifications of events whose labels (or ``detector``) match all ``matchers``; returns its id."""
        if not matchers:
            raise ValueError("a silence needs at least one matcher, e.g. node=n3 or detector=disk_fill")
        if duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        now = time.time() if now is None else now
        with self.catalog.write() as conn:
            res = conn.execute(t.silences.insert().values(matchers=label_key(matchers), starts_at=now,
                                                         ends_at=now + duration_s, created_by=created_by,
                                                         comment=comment))
            return _pk(res)

    def silences(self, now: float | None = None) -> builtins.list[dict[str, Any]]:
        """Silences in force at ``now``."""
        now = time.time() if now is None else now
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.silences).where(t.silences.c.starts_at <= now,
                                                            t.silences.c.ends_at > now)).all()
        return [dict(r._mapping) | {"matchers": json.loads(r.matchers)} for r in rows]

    @staticmethod
    def silenced(labels: Mapping[str, str], detector: str, silences: builtins.list[dict[str, Any]]) -> bool:
        """Whether an event with these labels is muted by one of ``silences``."""
        full = {**labels, "detector": detector}
        return any(all(full.get(k) == v for k, v in s["matchers"].items()) for s in silences)


def _pk(result: sa.CursorResult[Any]) -> int:
    """The primary key of a one-row insert."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
