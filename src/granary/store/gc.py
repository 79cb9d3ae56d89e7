"""Garbage collection: delete objects no version references, after a grace period."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from granary.errors import IntegrityError, StoreError

if TYPE_CHECKING:
    from granary.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    """What gc deleted (or would delete with ``dry_run``)."""

    dry_run: bool
    grace_s: float
    scanned: int = 0
    referenced: int = 0
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_young: int = 0
    staging_removed: list[str] = field(default_factory=list)
    unreadable_manifests: list[str] = field(default_factory=list)
    retention: dict[str, Any] = field(default_factory=dict)  # what retention policies expired or deleted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def referenced_keys(store: Store) -> tuple[set[str], list[str]]:
    """Every object key a recorded version needs: manifests, segments, shards, side tables."""
    keys: set[str] = set()
    unreadable: list[str] = []
    for version in store._versions():
        if version.state not in ("live", "expired"):
            continue  # "shredded"/"deleted" versions give up their objects
        keys.add(version.manifest_key)
        try:
            manifest = store._load_manifest(version.manifest_key, expected_id=version.id)
        except IntegrityError:
            unreadable.append(version.manifest_key)
            continue
        keys.update(key for key, _size in manifest.object_keys())
    return keys, unreadable


def collect(store: Store, *, dry_run: bool = False, grace_s: float | None = None) -> GcReport:
    """Delete unreferenced objects older than ``grace_s`` (default: the configured grace period).

    Objects younger than the grace period are kept, so a commit in progress (whose shards are
    published before its manifest) and readers of just-replaced versions are never broken. If any
    manifest is unreadable nothing is deleted: its objects cannot be told apart from garbage.
    """
    grace = store.settings.gc_grace_s if grace_s is None else grace_s
    if grace < 0:
        raise StoreError(f"the gc grace period must be >= 0 seconds, got {grace}",
                         hint="a grace period protects commits in progress; use 0 only when no writer runs")
    store.hooks.authorize("gc", "*")
    report = GcReport(dry_run=dry_run, grace_s=grace)
    report.retention = store.hooks.prepare_gc(store, dry_run=dry_run)  # retention policies, expiry
    keys, unreadable = referenced_keys(store)
    report.referenced = len(keys)
    report.unreadable_manifests = unreadable
    cutoff = time.time() - grace
    for obj in store.objects.list("datasets"):
        report.scanned += 1
        if obj.key in keys:
            continue
        if obj.mtime > cutoff:
            report.kept_young += 1
            continue
        if unreadable:
            continue
        report.deleted.append(obj.key)
        report.deleted_bytes += obj.size
        if not dry_run:
            store.objects.delete(obj.key)
    root = store.objects.staging_root
    if root.exists():
        for d in root.iterdir():
            if d.stat().st_mtime <= cutoff:
                report.staging_removed.append(d.name)
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
    store.hooks.record("gc", "*", details={"deleted": len(report.deleted), "dry_run": dry_run})
    log.info("gc: %d objects scanned, %d deleted", report.scanned, len(report.deleted))
    return report
