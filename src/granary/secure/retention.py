"""Version expiry: retention policies (keep N versions or D days) and the delayed deletion of expired versions.

A version moves ``live -> expired`` (readers get a clear error; its objects stay for the gc grace period)
``-> deleted`` (gc frees the objects no other version needs) or ``-> shredded`` (its exclusive encrypted
shards' data keys were destroyed). Branch and tag heads are never expired by retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.catalog import tables as store_tables
from granary.secure import tables as t

if TYPE_CHECKING:
    from granary.secure.guard import Guard
    from granary.store import Store

log = logging.getLogger(__name__)
DAY_S = 86400.0


@dataclass
class RetentionReport:
    """What one retention pass did (or would do with ``dry_run``)."""

    dry_run: bool
    expired: dict[str, list[str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    shredded_keys: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "expired": self.expired, "deleted": self.deleted,
                "shredded_keys": self.shredded_keys}


def set_state(catalog: Catalog, version_ids: Iterable[str], state: str, *, dataset: str, reason: str,
              by: str) -> None:
    """Move versions to ``state`` and remember when and why they stopped being live."""
    ids = sorted(set(version_ids))
    if not ids:
        return
    now = time.time()
    with catalog.write() as conn:
        conn.execute(store_tables.versions.update().where(store_tables.versions.c.id.in_(ids))
                     .values(state=state))
        known = set(conn.execute(sa.select(t.expired.c.version_id).where(t.expired.c.version_id.in_(ids)))
                    .scalars())
        new = [{"version_id": v, "dataset": dataset, "reason": reason, "at": now, "by": by}
               for v in ids if v not in known]
        if new:
            conn.execute(t.expired.insert(), new)


def expiry_candidates(store: Store, dataset: str, *, keep_versions: int | None, retention_days: float | None,
                      now: float) -> list[str]:
    """Live versions of ``dataset`` outside its retention policy (never a branch or tag head)."""
    heads = {r.version_id for r in store._refs(dataset)}
    live = sorted((v for v in store._versions(dataset) if v.state == "live"), key=lambda v: -v.created_at)
    out = []
    for rank, version in enumerate(live):
        too_many = keep_versions is not None and rank >= keep_versions
        too_old = retention_days is not None and now - version.created_at > retention_days * DAY_S
        if (too_many or too_old) and version.id not in heads:
            out.append(version.id)
    return out


def exclusive_key_refs(store: Store, version_ids: set[str], dataset: str) -> list[str]:
    """Data-key refs of encrypted shards used only by ``version_ids`` (not by any other kept version)."""
    kept: set[str] = set()
    mine: dict[str, str] = {}
    for version in store._versions(dataset):
        manifest = store._manifest(version.id)
        entries = list(manifest.shards) + [e for es in manifest.tables.values() for e in es]
        for entry in entries:
            if version.id in version_ids:
                if "enc" in entry.meta:
                    mine[entry.key] = str(entry.meta["enc"]["key_ref"])
            elif version.state in ("live", "expired"):
                kept.add(entry.key)
    return sorted(ref for key, ref in mine.items() if key not in kept)


def apply_retention(store: Store, guard: Guard, *, dry_run: bool = False, now: float | None = None
                    ) -> RetentionReport:
    """Expire versions outside retention policies; delete (or shred) versions expired longer than the grace."""
    now = time.time() if now is None else now
    report = RetentionReport(dry_run=dry_run)
    by = guard.principal.name
    for dataset, policy in guard.policies.all().items():
        if policy.keep_versions is None and policy.retention_days is None:
            continue
        try:
            ids = expiry_candidates(store, dataset, keep_versions=policy.keep_versions,
                                    retention_days=policy.retention_days, now=now)
        except LookupError:
            continue  # the dataset was deleted; its policy is stale
        if ids:
            report.expired[dataset] = ids
            if not dry_run:
                set_state(store.catalog, ids, "expired", dataset=dataset, reason="retention", by=by)
    _finish_expired(store, guard, report, now=max(now, time.time()))
    if not dry_run and (report.expired or report.deleted):
        guard.record("retention", "*", details=report.to_dict())
    return report


def _finish_expired(store: Store, guard: Guard, report: RetentionReport, *, now: float) -> None:
    grace = store.settings.gc_grace_s
    with store.catalog.read() as conn:
        rows = conn.execute(
            sa.select(t.expired.c.version_id, t.expired.c.dataset)
            .join(store_tables.versions, store_tables.versions.c.id == t.expired.c.version_id)
            .where(store_tables.versions.c.state == "expired", t.expired.c.at <= now - grace)).all()
    by_dataset: dict[str, set[str]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, set()).add(row.version_id)
    for dataset, ids in by_dataset.items():
        refs = exclusive_key_refs(store, ids, dataset)
        report.deleted.extend(sorted(ids))
        if report.dry_run:
            continue
        report.shredded_keys += guard.keys.shred(refs) if refs else 0
        set_state(store.catalog, ids, "deleted", dataset=dataset, reason="expired past grace", by=guard.principal.name)


def shred_version(store: Store, guard: Guard, ref: str) -> tuple[str, int]:
    """Crypto-shred one version: destroy the data keys of its encrypted shards no other kept version uses,
    and mark it ``shredded`` (readers get a clear error). Returns (version id, keys destroyed)."""
    version = store.resolve(ref)
    guard.authorize("key", version.dataset, obj=f"{version.dataset}@{version.id}")
    heads = {r.name for r in store.refs(version.dataset) if r.version_id == version.id}
    if heads:
        raise ValueError(f"{version.dataset}@{version.short_id} is the head of {sorted(heads)}; "
                         "commit a replacement or move those refs first")
    refs = exclusive_key_refs(store, {version.id}, version.dataset)
    count = guard.keys.shred(refs)
    set_state(store.catalog, [version.id], "shredded", dataset=version.dataset, reason="key shred",
              by=guard.principal.name)
    guard.record("key.shred", version.dataset, obj=f"{version.dataset}@{version.id}", details={"keys": count})
    return version.id, count
