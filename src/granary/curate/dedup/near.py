"""Near-duplicate removal: MinHash signatures, LSH banding, verified candidate pairs, union-find clusters."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from granary.curate.dedup.common import ids_array, ids_of, write_decisions
from granary.curate.dedup.minhash import EMPTY, SCHEMES, band_hashes, signatures
from granary.curate.dedup.unionfind import UnionFind
from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch, GlobalStep, StepConfig, register_step

log = logging.getLogger(__name__)


class MinHashDeduplicator(GlobalStep):
    """Keeps the first document (input order) of every cluster of near duplicates.

    Memory in `decide`: one band column (8 B/doc) plus its sort order (8 B/doc) and the union-find parent
    array (8 B/doc, memory-mapped past `memory_limit_bytes`); signatures stay on disk and only candidate
    pairs are read back for verification. About 24 MB per million documents, independent of band count.
    """

    config: MinHashDedupConfig

    def collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        c = self.config
        text = batch.table.column(batch.text_column).combine_chunks()
        sig = signatures(text, shingle=c.shingle, ngram=c.ngram, scheme=c.scheme, num_perm=c.num_perm,
                         seed=c.seed)
        has = (sig != EMPTY).any(axis=1)
        bands = band_hashes(sig, c.bands, c.rows)
        ids = batch.table.column("id").to_pylist() if "id" in batch.table.column_names else [None] * len(sig)
        return {"bands": bands, "sig": sig, "has": has, "ids": ids_array(ids)}

    def decide(self, collected: list[Path], workdir: Path) -> list[Path]:
        c = self.config
        has_parts = [_load(p, "has") for p in collected]
        sizes = [len(h) for h in has_parts]
        starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        n = int(starts[-1])
        sigs = _SignatureReader(collected, starts, workdir)
        band_maps = [_as_npy(p, "bands", workdir / "bands" / f"{i:06d}.npy", transpose=True)
                     for i, p in enumerate(collected)]
        uf = UnionFind(n, memory_limit_bytes=c.memory_limit_bytes, spill_dir=workdir / "spill")
        has = np.concatenate(has_parts) if collected else np.zeros(0, bool)
        pairs = verified = 0
        for b in range(c.bands):
            col = np.concatenate([np.asarray(m[b]) for m in band_maps]) if collected else np.zeros(0)
            gid = np.flatnonzero(has)
            col = col[gid]
            order = np.argsort(col, kind="stable")
            sc = col[order]
            same = np.zeros(len(sc), dtype=bool)
            same[1:] = sc[1:] == sc[:-1]
            first = order[np.maximum.accumulate(np.where(~same, np.arange(len(sc)), 0))]
            a, m = gid[first[same]], gid[order[same]]
            pairs += len(a)
            if len(a) and c.verify_threshold > 0:
                keep = sigs.jaccard(a, m) >= c.verify_threshold
                a, m = a[keep], m[keep]
            verified += len(a)
            uf.union(a, m)
        roots = uf.roots()
        drop = np.flatnonzero(roots != np.arange(n))
        kept_ids = ids_of(collected, roots[drop], starts)
        reasons = np.array([f"near_duplicate_of:{k}" for k in kept_ids], dtype=str)
        clusters = len(np.unique(roots[drop]))
        summary = {"docs": n, "candidate_pairs": int(pairs), "verified_pairs": int(verified),
                   "duplicates": len(drop), "clusters": int(clusters), "spilled": uf.spilled}
        (workdir / "summary.json").write_text(json.dumps(summary))
        if c.write_clusters:
            members = np.flatnonzero(np.isin(roots, roots[drop]))
            import pyarrow.parquet as pq

            pq.write_table(pa.table({
                "cluster": pa.array(ids_of(collected, roots[members], starts).tolist(), pa.string()),
                "id": pa.array(ids_of(collected, members, starts).tolist(), pa.string()),
                "kept": pa.array(roots[members] == members)}), workdir / "clusters.parquet")
        log.info("near dedup: %s", summary)
        return write_decisions(workdir, starts, drop, reasons, {"cluster": roots[drop]})

    def apply(self, batch: DocBatch, decision: dict[str, np.ndarray]) -> None:
        mask = np.zeros(batch.num_rows, dtype=bool)
        mask[decision["rows"]] = True
        reasons = np.empty(batch.num_rows, dtype=object)
        reasons[decision["rows"]] = decision["reasons"]
        batch.drop(self.name, mask, reasons)

    def summary(self, workdir: Path) -> dict[str, Any]:
        p = workdir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def side_tables(self, workdir: Path) -> dict[str, pa.Table]:
        """The cluster table, when `write_clusters` is on."""
        p = workdir / "clusters.parquet"
        if not p.exists():
            return {}
        import pyarrow.parquet as pq

        return {"near_dup_clusters": pq.read_table(p)}


def _load(path: Path, key: str) -> np.ndarray:
    with np.load(path) as z:
        return np.asarray(z[key])


def _as_npy(path: Path, key: str, target: Path, *, transpose: bool = False) -> np.ndarray:
    """Extract one array of a collected .npz into a memory-mappable .npy (once; reused on resume)."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        arr = _load(path, key)
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, np.ascontiguousarray(arr.T) if transpose else arr)
        tmp.replace(target)
    return np.load(target, mmap_mode="r")


class _SignatureReader:
    """Random access to signature rows of every shard, through one memory-mapped .npy per shard."""

    def __init__(self, collected: list[Path], starts: np.ndarray, workdir: Path) -> None:
        self.starts = starts
        self.maps = [_as_npy(p, "sig", workdir / "sig" / f"{i:06d}.npy") for i, p in enumerate(collected)]

    def rows(self, gids: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.starts, gids, side="right") - 1
        out = np.empty((len(gids), self.maps[0].shape[1] if self.maps else 0), dtype=np.uint32)
        for s in np.unique(shard):
            sel = shard == s
            local = gids[sel] - self.starts[s]
            order = np.argsort(local)
            got = self.maps[s][local[order]]
            out_idx = np.flatnonzero(sel)[order]
            out[out_idx] = got
        return out

    def jaccard(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty(len(a))
        step = 1 << 16
        for lo in range(0, len(a), step):
            out[lo : lo + step] = (self.rows(a[lo : lo + step]) == self.rows(b[lo : lo + step])).mean(axis=1)
        return out


@register_step("minhash_dedup", MinHashDeduplicator, kind="global")
@dataclass(kw_only=True, frozen=True)
class MinHashDedupConfig(StepConfig):
    """Shingling, signature and LSH parameters.

    Two documents with Jaccard similarity J become candidates with probability 1 - (1 - J**rows)**bands;
    candidates are kept as duplicates when their signature agreement is >= `verify_threshold` (0 disables).
    """

    shingle: Literal["word", "char"] = "word"
    ngram: int = 5
    scheme: Literal["oph", "permutation"] = "oph"
    num_perm: int = 128
    bands: int = 32
    rows: int = 4
    verify_threshold: float = 0.5
    seed: int = 1
    write_clusters: bool = False
    memory_limit_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.shingle not in ("word", "char"):
            raise PipelineSpecError("minhash_dedup.shingle", f"must be word or char, got {self.shingle!r}")
        if self.scheme not in SCHEMES:
            raise PipelineSpecError("minhash_dedup.scheme", f"unknown scheme {self.scheme!r}",
                                    hint=f"known: {sorted(SCHEMES)}")
        if self.bands * self.rows > self.num_perm:
            raise PipelineSpecError("minhash_dedup", f"bands*rows = {self.bands * self.rows} exceeds "
                                    f"num_perm = {self.num_perm}", hint="raise num_perm or lower bands/rows")
        if self.ngram < 1 or self.bands < 1 or self.rows < 1:
            raise PipelineSpecError("minhash_dedup", "ngram, bands and rows must be >= 1")
        if not 0.0 <= self.verify_threshold <= 1.0:
            raise PipelineSpecError("minhash_dedup.verify_threshold", "must be in [0, 1]")
