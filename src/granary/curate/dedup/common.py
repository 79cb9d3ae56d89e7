"""Helpers shared by the global (whole-dataset) dedup steps: collected-key files and decision files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_column(paths: list[Path], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate `key` from every shard's collected .npz; also returns each shard's starting global index."""
    parts = []
    starts = np.zeros(len(paths) + 1, dtype=np.int64)
    for i, p in enumerate(paths):
        with np.load(p) as z:
            arr = z[key]
        parts.append(arr)
        starts[i + 1] = starts[i] + len(arr)
    if not parts:
        return np.zeros(0), starts
    return np.concatenate(parts), starts


def ids_of(paths: list[Path], gids: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The document ids of global indices `gids` (reads one shard's ids at a time)."""
    out = np.empty(len(gids), dtype=object)
    shard = np.searchsorted(starts, gids, side="right") - 1
    for s in np.unique(shard):
        with np.load(paths[s]) as z:
            ids = z["ids"]
        sel = shard == s
        out[sel] = ids[gids[sel] - starts[s]]
    return out


def write_decisions(workdir: Path, starts: np.ndarray, drop_gids: np.ndarray, reasons: np.ndarray,
                    extra: dict[str, np.ndarray] | None = None) -> list[Path]:
    """One decision file per shard: the rows (shard-local) to drop and why."""
    workdir.mkdir(parents=True, exist_ok=True)
    order = np.argsort(drop_gids, kind="stable")
    drop_gids, reasons = drop_gids[order], reasons[order]
    extra = {k: v[order] for k, v in (extra or {}).items()}
    paths = []
    for s in range(len(starts) - 1):
        lo, hi = np.searchsorted(drop_gids, [starts[s], starts[s + 1]])
        path = workdir / f"decision-{s:06d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        arrays = {"rows": drop_gids[lo:hi] - starts[s], "reasons": np.asarray(reasons[lo:hi], dtype=str)}
        arrays.update({k: v[lo:hi] for k, v in extra.items()})
        np.savez(tmp, **arrays)
        tmp.replace(path)
        paths.append(path)
    return paths


def ids_array(batch_ids: list[str | None]) -> np.ndarray:
    """Document ids as a fixed-width unicode array (savez-able without pickle)."""
    return np.array(["" if x is None else str(x) for x in batch_ids], dtype=str)
