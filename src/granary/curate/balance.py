"""Balancing: resample documents per source or label to target proportions and emit class weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from granary.curate.dedup.common import load_column, write_decisions
from granary.curate.errors import PipelineSpecError
from granary.curate.hashing import mix64, span_hashes, string_buffers
from granary.curate.step import DocBatch, GlobalStep, StepConfig, register_step


class Balancer(GlobalStep):
    """Seeded, deterministic up- and down-sampling per group.

    Each group g with n_g documents gets rate r_g = target_share_g * total / n_g. A document is kept
    floor(r_g) times plus once more when its seeded uniform u (a hash of its id) is below frac(r_g), so the
    result does not depend on shard order or worker count. Copies get ids suffixed `~dupK`.
    """

    config: BalanceConfig

    def collect(self, batch: DocBatch) -> dict[str, np.ndarray]:
        c = self.config
        if batch.num_rows == 0:
            return {"groups": np.zeros(0, dtype=str), "u": np.zeros(0)}
        if c.column not in batch.table.column_names:
            raise PipelineSpecError("balance.column", f"the data has no column {c.column!r}",
                                    hint=f"columns: {batch.table.column_names}")
        groups = np.array([str(x) for x in batch.table.column(c.column).to_pylist()], dtype=str)
        ids = batch.table.column("id").cast(pa.string()).combine_chunks()
        off, data = string_buffers(ids)
        h = mix64(span_hashes(data, off[:-1], off[1:]) ^ np.uint64(c.seed))
        return {"groups": groups, "u": (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)}

    def decide(self, collected: list[Path], workdir: Path) -> list[Path]:
        c = self.config
        groups, starts = load_column(collected, "groups")
        u, _ = load_column(collected, "u")
        names, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
        total = c.total if c.total is not None else len(groups)
        share = _shares(c, names)
        rate = np.where(counts > 0, share * total / np.maximum(counts, 1), 0.0)
        copies = (np.floor(rate[inv]) + (u < (rate[inv] - np.floor(rate[inv])))).astype(np.int64)
        out_counts = np.bincount(inv, weights=copies, minlength=len(names)).astype(np.int64)
        kept = out_counts > 0
        weights = np.zeros(len(names))
        weights[kept] = out_counts.sum() / (kept.sum() * out_counts[kept])
        pq.write_table(pa.table({"group": names.tolist(), "docs_in": counts, "docs_out": out_counts,
                                 "target_share": share, "weight": weights}), workdir / "class_weights.parquet")
        (workdir / "summary.json").write_text(json.dumps({
            "docs_in": len(groups), "docs_out": int(out_counts.sum()),
            "groups": {str(g): int(o) for g, o in zip(names, out_counts, strict=True)}}))
        return write_decisions(workdir, starts, np.arange(len(groups)), np.full(len(groups), "", dtype=str),
                               {"copies": copies})

    def apply(self, batch: DocBatch, decision: dict[str, np.ndarray]) -> None:
        copies = np.zeros(batch.num_rows, dtype=np.int64)
        copies[decision["rows"]] = decision["copies"]
        groups = np.array([str(x) for x in batch.table.column(self.config.column).to_pylist()], dtype=object)
        reasons = np.array([f"balance_downsample:{g}" for g in groups], dtype=object)
        batch.drop(self.name, copies == 0, reasons)
        batch.repeat_rows(copies)

    def summary(self, workdir: Path) -> dict[str, Any]:
        p = workdir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def side_tables(self, workdir: Path) -> dict[str, pa.Table]:
        """The class-weight table for training."""
        p = workdir / "class_weights.parquet"
        return {"class_weights": pq.read_table(p)} if p.exists() else {}


def _shares(c: BalanceConfig, names: np.ndarray) -> np.ndarray:
    if c.targets:
        raw = np.array([c.targets.get(str(g), 0.0 if c.drop_unlisted else -1.0) for g in names], dtype=float)
        listed = raw >= 0
        unlisted_share = (1.0 - raw[listed].sum()) / max((~listed).sum(), 1)
        raw[~listed] = max(unlisted_share, 0.0)
        total = raw.sum()
        return raw / total if total > 0 else raw
    return np.full(len(names), 1.0 / max(len(names), 1))


@register_step("balance", Balancer, kind="global")
@dataclass(kw_only=True, frozen=True)
class BalanceConfig(StepConfig):
    """Target shares per value of `column` (empty: uniform over the groups present)."""

    column: str = "source"
    targets: dict[str, float] = field(default_factory=dict)
    total: int | None = None
    drop_unlisted: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if any(v < 0 for v in self.targets.values()):
            raise PipelineSpecError("balance.targets", "shares must be >= 0")
        if self.targets and sum(self.targets.values()) <= 0:
            raise PipelineSpecError("balance.targets", "shares must not all be zero")
        if self.total is not None and self.total < 1:
            raise PipelineSpecError("balance.total", "must be >= 1")
