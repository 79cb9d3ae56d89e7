"""Retiring checkpoint versions: the store's own path for a run's checkpoint retention (``keep_last``/``keep_every``).

A retired version moves ``live -> deleted`` in the catalog (readers get a clear error) and :meth:`Store.gc` then
frees the objects that no kept version needs. Retiring is authorised (action ``retire``) and recorded in the
audit log like every other store write, and it refuses, per version, to drop one that something still needs:

- the head of a branch or a tag (the newest checkpoint is the branch head; a tag marks a checkpoint to keep);
- a version named by the lineage of a live version of any dataset (a model registered from the checkpoint, a
  distilled or compressed model, any derived data): the lineage must stay readable.

Only datasets of kind ``checkpoint`` can be retired this way; the data kinds have retention policies
(:mod:`granary.secure.retention`) with an expiry grace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from granary.catalog import tables as T
from granary.errors import IntegrityError, StoreError
from granary.store.lineage import lineage_sources

if TYPE_CHECKING:
    from granary.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class RetireReport:
    """Which versions were retired (or would be with ``dry_run``) and which were kept, with the reason."""

    dataset: str
    dry_run: bool
    retired: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "dry_run": self.dry_run, "retired": self.retired, "kept": self.kept}


def needed(store: Store, dataset: str, candidates: set[str]) -> dict[str, str]:
    """Why each of ``candidates`` must stay (only those that must): a ref head, or a live version's lineage."""
    why: dict[str, str] = {}
    for ref in store._refs(dataset):
        if ref.version_id in candidates:
            why.setdefault(ref.version_id, f"head of {ref.kind} {ref.name}")
    if not candidates - set(why):
        return why
    versions = store._versions()
    oldest = min((v.created_at for v in versions if v.id in candidates), default=0.0)
    for version in versions:  # a version can only name older ones in its lineage
        if version.state != "live" or version.id in candidates or version.created_at < oldest:
            continue
        try:
            lineage = store._manifest(version).lineage
        except IntegrityError:
            raise StoreError(f"the manifest of {version.ref} is unreadable; cannot tell whether it needs "
                             "a checkpoint", hint="run `granary verify` and repair the store first") from None
        ids, _names = lineage_sources(lineage)
        for vid in set(ids) & candidates:
            why.setdefault(vid, f"lineage of {version.ref}")
    return why


def retire(store: Store, dataset: str, version_ids: list[str], *, reason: str, dry_run: bool = False
           ) -> RetireReport:
    """Retire ``version_ids`` of checkpoint dataset ``dataset``, except those still needed (see module doc)."""
    info = store._dataset(dataset)
    if info.kind != "checkpoint":
        raise StoreError(f"{dataset} is a {info.kind} dataset; only checkpoint versions are retired this way",
                         hint="data versions expire through a retention policy (`granary policy set`)")
    store.hooks.authorize("retire", dataset)
    mine = {v.id: v for v in store._versions(dataset)}
    unknown = [v for v in version_ids if v not in mine]
    if unknown:
        raise StoreError(f"{unknown[0][:12]} is not a version of {dataset}")
    candidates = {v for v in version_ids if mine[v].state == "live"}
    report = RetireReport(dataset=dataset, dry_run=dry_run)
    report.kept = needed(store, dataset, candidates)
    report.retired = sorted(candidates - set(report.kept), key=lambda v: mine[v].created_at)
    if dry_run or not report.retired:
        return report
    with store.catalog.write() as conn:
        conn.execute(T.versions.update().where(T.versions.c.id.in_(report.retired), T.versions.c.state == "live")
                     .values(state="deleted"))
    store.hooks.record("retire", dataset, details={"versions": report.retired, "reason": reason,
                                                   "kept": report.kept})
    log.info("retired %d version(s) of %s (%s)", len(report.retired), dataset, reason)
    return report
