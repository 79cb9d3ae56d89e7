"""Balancing: proportions hit their targets, sampling is seeded and shard-independent, weights are emitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.curate.balance import BalanceConfig
from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch


def _run(cfg: BalanceConfig, tables: list[pa.Table], tmp: Path) -> tuple[list[DocBatch], object]:
    step = cfg.build()
    tmp.mkdir(parents=True, exist_ok=True)
    batches = [DocBatch(t) for t in tables]
    paths = []
    for i, b in enumerate(batches):
        np.savez(tmp / f"{i}.npz", **step.collect(b))  # type: ignore[attr-defined]
        paths.append(tmp / f"{i}.npz")
    for b, d in zip(batches, step.decide(paths, tmp), strict=True):  # type: ignore[attr-defined]
        step.apply(b, dict(np.load(d)))  # type: ignore[attr-defined]
    return batches, step


def _table(n_a: int, n_b: int) -> pa.Table:
    src = ["a"] * n_a + ["b"] * n_b
    return pa.table({"id": [f"d{i}" for i in range(len(src))], "text": ["t"] * len(src), "source": src})


def test_up_and_down_sampling_to_targets(tmp_path: Path) -> None:
    t = _table(8000, 2000)
    batches, step = _run(BalanceConfig(targets={"a": 0.5, "b": 0.5}), [t.slice(0, 5000), t.slice(5000)], tmp_path)
    out = pa.concat_tables([b.table for b in batches])
    counts = dict(zip(*np.unique(out.column("source").to_numpy(zero_copy_only=False), return_counts=True),
                      strict=True))
    assert abs(counts["a"] - 5000) < 200 and abs(counts["b"] - 5000) < 200
    ids = out.column("id").to_pylist()
    assert len(ids) == len(set(ids)) and any("~dup" in i for i in ids)
    weights = step.side_tables(tmp_path)["class_weights"].to_pylist()  # type: ignore[attr-defined]
    assert [w["group"] for w in weights] == ["a", "b"]
    assert all(0.9 < w["weight"] < 1.1 for w in weights)
    dropped = sum(b.rejected().num_rows for b in batches)
    assert dropped == 8000 - sum(1 for i, s in zip(ids, out.column("source").to_pylist(), strict=True)
                                 if s == "a" and "~dup" not in i)


def test_result_does_not_depend_on_sharding(tmp_path: Path) -> None:
    t = _table(3000, 1000)
    cfg = BalanceConfig(targets={"a": 0.25, "b": 0.75}, seed=3)
    one, _ = _run(cfg, [t], tmp_path / "one")
    three, _ = _run(cfg, [t.slice(0, 1000), t.slice(1000, 1500), t.slice(2500)], tmp_path / "three")
    assert sorted(pa.concat_tables([b.table for b in one]).column("id").to_pylist()) == sorted(
        pa.concat_tables([b.table for b in three]).column("id").to_pylist())


def test_validation() -> None:
    with pytest.raises(PipelineSpecError, match=">= 0"):
        BalanceConfig(targets={"a": -1.0})
    batch = DocBatch(pa.table({"id": ["x"], "text": ["t"]}))
    with pytest.raises(PipelineSpecError, match="no column 'source'"):
        BalanceConfig().build().collect(batch)  # type: ignore[attr-defined]
