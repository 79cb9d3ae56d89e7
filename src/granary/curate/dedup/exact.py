"""Exact deduplication across the whole dataset on normalised text; keeps the first document in input order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from granary.curate.dedup.common import ids_array, ids_of, load_column, write_decisions
from granary.curate.hashing import span_hashes, string_buffers
from granary.curate.step import DocBatch, GlobalStep, StepConfig, register_step


def text_fingerprints(batch: DocBatch, *, lowercase: bool, collapse_whitespace: bool) -> np.ndarray:
    """(n, 2) uint64: a 128-bit fingerprint of each document's normalised text."""
    arr = batch.table.column(batch.text_column)
    if lowercase:
        arr = pc.utf8_lower(arr)
    if collapse_whitespace:
        arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s+", " "))
    offsets, data = string_buffers(arr.combine_chunks())
    s, e = offsets[:-1], offsets[1:]
    # two independent 64-bit hashes: the second runs over the bytes xor-ed with a constant
    return np.stack([span_hashes(data, s, e), span_hashes(data ^ np.uint8(0xA5), s, e)], axis=1)


class ExactDeduplicator(GlobalStep):
    """Drops every document whose normalised text equals an earlier document's (input order)."""

    config: ExactDedupConfig

    def collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        c = self.config
        fp = text_fingerprints(batch, lowercase=c.lowercase, collapse_whitespace=c.collapse_whitespace)
        ids = batch.table.column("id").to_pylist() if "id" in batch.table.column_names else [None] * len(fp)
        return {"h1": fp[:, 0], "h2": fp[:, 1], "ids": ids_array(ids)}

    def decide(self, collected: list[Path], workdir: Path) -> list[Path]:
        h1, starts = load_column(collected, "h1")
        h2, _ = load_column(collected, "h2")
        n = len(h1)
        order = np.lexsort((np.arange(n), h2, h1))  # by hash, then input order
        s1, s2 = h1[order], h2[order]
        same = np.zeros(n, dtype=bool)
        if n > 1:
            same[1:] = (s1[1:] == s1[:-1]) & (s2[1:] == s2[:-1])
        group_first = order[np.maximum.accumulate(np.where(~same, np.arange(n), 0))]
        drop = order[same]
        kept = group_first[same]
        kept_ids = ids_of(collected, kept, starts)
        reasons = np.array([f"exact_duplicate_of:{k}" for k in kept_ids], dtype=str)
        (workdir / "summary.json").write_text(json.dumps({"docs": int(n), "duplicates": len(drop),
                                                           "groups": len(np.unique(kept))}))
        return write_decisions(workdir, starts, drop, reasons)

    def apply(self, batch: DocBatch, decision: dict[str, np.ndarray]) -> None:
        mask = np.zeros(batch.num_rows, dtype=bool)
        mask[decision["rows"]] = True
        reasons = np.empty(batch.num_rows, dtype=object)
        reasons[decision["rows"]] = decision["reasons"]
        batch.drop(self.name, mask, reasons)

    def summary(self, workdir: Path) -> dict[str, Any]:
        p = workdir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}


@register_step("exact_dedup", ExactDeduplicator, kind="global")
@dataclass(kw_only=True, frozen=True)
class ExactDedupConfig(StepConfig):
    """Normalisation applied before comparing texts."""

    lowercase: bool = False
    collapse_whitespace: bool = True
