"""Vectorised, deterministic union-find over integer ids, in RAM or spilled to memory-mapped files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class UnionFind:
    """Connected components of `n` ids; every component's root is its smallest id (deterministic).

    Edges are merged in vectorised rounds (hook larger roots under smaller ones, then pointer-jump), so the
    cost is a few numpy passes per batch of edges. When `n * 8` bytes exceed `memory_limit_bytes`, the parent
    array lives in a memory-mapped file under `spill_dir` instead of RAM.
    """

    def __init__(self, n: int, *, memory_limit_bytes: int = 1 << 30, spill_dir: Path | None = None) -> None:
        self.n = n
        self.parent: np.ndarray
        self.spilled = n * 8 > memory_limit_bytes and spill_dir is not None
        if self.spilled:
            assert spill_dir is not None
            spill_dir.mkdir(parents=True, exist_ok=True)
            path = spill_dir / "unionfind.parent.i64"
            self.parent = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(n,))
            self.parent[:] = np.arange(n, dtype=np.int64)
            log.info("union-find over %d ids spilled to %s", n, path)
        else:
            self.parent = np.arange(n, dtype=np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The root of each id (the parent array is compressed along the way)."""
        p = self.parent
        r = p[ids]
        while True:
            rr = p[r]
            if np.array_equal(rr, r):
                break
            r = rr
        p[ids] = r
        return r

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the components of a[i] and b[i] for every i."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        while len(a):
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            ra, rb = ra[differ], rb[differ]
            a, b = a[differ], b[differ]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            np.minimum.at(self.parent, hi, lo)

    def roots(self) -> np.ndarray:
        """The root of every id, fully compressed."""
        out = np.empty(self.n, dtype=np.int64)
        step = 1 << 22
        for lo in range(0, self.n, step):
            ids = np.arange(lo, min(lo + step, self.n), dtype=np.int64)
            out[lo : lo + len(ids)] = self.find(ids)
        return out
