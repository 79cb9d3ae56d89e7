"""Checkpoint retention: ``keep_last`` / ``keep_every``, applied through the store after each checkpoint commit.

``keep_last = N`` keeps a run's N newest checkpoints; ``keep_every = K`` also keeps, for good, every checkpoint
whose step is a multiple of K. The others are retired with :meth:`granary.store.Store.retire` (authorised and
audited), which also keeps any checkpoint that is a branch or tag head or that a live version's lineage names
(a registered model, for one); :meth:`granary.store.Store.gc` then frees their objects. ``keep_last = 0`` turns
retention off (every checkpoint is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from granary.store import Store


@dataclass(frozen=True)
class Checkpoint:
    """One live checkpoint version: its id, its step, when it was committed."""

    id: str
    step: int
    created_at: float


def select(checkpoints: list[Checkpoint], *, keep_last: int, keep_every: int = 0) -> tuple[list[Checkpoint],
                                                                                           list[Checkpoint]]:
    """Split ``checkpoints`` into (kept, dropped), each newest first, by the policy (``keep_last`` 0: keep all)."""
    newest = sorted(checkpoints, key=lambda c: (c.created_at, c.step), reverse=True)
    if keep_last <= 0:
        return newest, []
    kept: list[Checkpoint] = []
    dropped: list[Checkpoint] = []
    for rank, ckpt in enumerate(newest):
        every = keep_every > 0 and ckpt.step % keep_every == 0
        (kept if rank < keep_last or every else dropped).append(ckpt)
    return kept, dropped


def live_checkpoints(store: Store, dataset: str) -> list[Checkpoint]:
    """The live versions of a checkpoint dataset that record a step (newest first)."""
    out = []
    for version in store.versions(dataset):
        if version.state != "live":
            continue
        step = store.manifest(version).metadata.get("step")
        if isinstance(step, int):
            out.append(Checkpoint(version.id, step, version.created_at))
    return sorted(out, key=lambda c: (c.created_at, c.step), reverse=True)


def apply_retention(store: Store, dataset: str, *, keep_last: int, keep_every: int = 0,
                    dry_run: bool = False) -> dict[str, Any]:
    """Retire the checkpoints of ``dataset`` outside the policy; returns what was kept and retired (by step)."""
    found = live_checkpoints(store, dataset)
    kept, dropped = select(found, keep_last=keep_last, keep_every=keep_every)
    steps = {c.id: c.step for c in found}
    out: dict[str, Any] = {"dataset": dataset, "keep_last": keep_last, "keep_every": keep_every, "dry_run": dry_run,
                           "kept_steps": sorted(c.step for c in kept), "retired": [], "retired_steps": [],
                           "protected": {}}
    if not dropped:
        return out
    report = store.retire(dataset, [c.id for c in dropped], dry_run=dry_run,
                          reason=f"checkpoint retention keep_last={keep_last} keep_every={keep_every}")
    out["retired"] = report.retired
    out["retired_steps"] = sorted(steps[v] for v in report.retired)
    out["protected"] = {f"step {steps[v]}": why for v, why in report.kept.items()}
    out["kept_steps"] = sorted(set(out["kept_steps"]) | {steps[v] for v in report.kept})
    return out
