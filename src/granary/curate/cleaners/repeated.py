"""Boilerplate lines found by frequency: lines that occur in many documents of the dataset are removed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from granary.curate.dedup.common import load_column
from granary.curate.errors import PipelineSpecError
from granary.curate.hashing import combine, span_hashes
from granary.curate.step import DocBatch, GlobalStep, StepConfig, register_step
from granary.curate.textops import gather_spans


class RepeatedLineRemover(GlobalStep):
    """Counts, over the whole dataset, in how many documents each (stripped) line occurs, and removes the lines
    that occur in at least `min_docs` documents and `min_fraction` of all documents (menus, footers, cookie
    notices, license banners). Blank lines and lines shorter than `min_chars` are never counted or removed.

    Memory in `decide`: 8 B per distinct line per document, processed in hash partitions of at most
    `memory_limit_bytes`.
    """

    config: RepeatedLinesConfig

    def _line_hashes(self, batch: DocBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v = batch.view
        sl = v.stripped_lines
        counted = (v.chars(sl.starts, sl.ends) >= self.config.min_chars)
        h = span_hashes(v.data, sl.starts, sl.ends)
        return h, sl.doc, counted

    def collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        h, doc, counted = self._line_hashes(batch)
        # one entry per distinct line per document
        per_doc = np.unique(combine(h[counted], doc[counted].astype(np.uint64)), return_index=True)[1]
        return {"h": h[counted][per_doc], "docs": np.array([batch.num_rows], dtype=np.int64)}

    def decide(self, collected: list[Path], workdir: Path) -> list[Path]:
        c = self.config
        total_docs = int(load_column(collected, "docs")[0].sum()) if collected else 0
        sizes = []
        for p in collected:
            with np.load(p) as z:
                sizes.append(len(z["h"]))
        parts = max(1, math.ceil(sum(sizes) * 16 / c.memory_limit_bytes))
        threshold = max(c.min_docs, math.ceil(c.min_fraction * total_docs))
        frequent = []
        for part in range(parts):
            chunk = []
            for p in collected:
                with np.load(p) as z:
                    h = z["h"]
                chunk.append(h[(h % np.uint64(parts)) == part])
            values, counts = np.unique(np.concatenate(chunk) if chunk else np.zeros(0, np.uint64),
                                       return_counts=True)
            frequent.append(values[counts >= threshold])
        boiler = np.sort(np.concatenate(frequent)) if frequent else np.zeros(0, np.uint64)
        (workdir / "summary.json").write_text(json.dumps({"docs": total_docs, "threshold_docs": threshold,
                                                          "boilerplate_lines": len(boiler),
                                                          "partitions": parts}))
        paths = []
        for i in range(len(collected)):
            path = workdir / f"decision-{i:06d}.npz"
            tmp = workdir / f".decision-{i:06d}.tmp.npz"
            np.savez(tmp, rows=np.zeros(0, np.int64), boiler=boiler)
            tmp.replace(path)
            paths.append(path)
        return paths

    def apply(self, batch: DocBatch, decision: dict[str, np.ndarray]) -> None:
        boiler = decision["boiler"]
        if len(boiler) == 0 or batch.num_rows == 0:
            return
        h, _, counted = self._line_hashes(batch)
        drop = counted & np.isin(h, boiler)
        if not drop.any():
            return
        lines = batch.view.lines
        self.removed_lines = getattr(self, "removed_lines", 0) + int(drop.sum())
        batch.set_text(gather_spans(batch.view, lines.select(~drop)))

    def take_counters(self) -> dict[str, int]:
        """Lines removed since the last call."""
        n, self.removed_lines = getattr(self, "removed_lines", 0), 0
        return {"lines_removed": n} if n else {}

    def summary(self, workdir: Path) -> dict[str, Any]:
        p = workdir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}


@register_step("repeated_lines", RepeatedLineRemover, kind="global")
@dataclass(kw_only=True, frozen=True)
class RepeatedLinesConfig(StepConfig):
    """A line is boilerplate when it occurs in >= min_docs documents and >= min_fraction of all documents."""

    min_docs: int = 10
    min_fraction: float = 0.001
    min_chars: int = 10
    memory_limit_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.min_docs < 2:
            raise PipelineSpecError("repeated_lines.min_docs", "must be >= 2")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise PipelineSpecError("repeated_lines.min_fraction", "must be in [0, 1]")
