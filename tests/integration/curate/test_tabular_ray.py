"""A tabular pipeline shard by shard on a local Ray instance gives the same version as in one process."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.curate.tabular import TabularPipeline, curate_table_sharded
from granary.store import open_store

pytestmark = pytest.mark.ray


def test_ray_executor_matches_inline(tmp_path, ray_instance) -> None:  # type: ignore[no-untyped-def]
    store = open_store(Settings.from_env(home=tmp_path / "g", shard_size_bytes=8192, row_group_bytes=4096))
    rng = np.random.default_rng(5)
    n = 800
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", pa.table({"key": rng.integers(0, 500, n), "ts": rng.permutation(n),
                                        "x": pa.array(rng.normal(0, 1, n), mask=rng.random(n) < 0.1)}))
    assert len(store.manifest("raw").shards) >= 2
    spec = TabularPipeline.from_dict({"name": "ray", "steps": [
        {"step": "impute", "strategy": "median", "columns": ["x"]},
        {"step": "outliers", "method": "iqr", "action": "clip", "columns": ["x"]},
        {"step": "dedup", "keys": ["key"], "keep": "latest", "order_by": "ts"}]})
    inline = curate_table_sharded(store, spec, "raw", "a", executor="inline")
    on_ray = curate_table_sharded(store, spec, "raw", "b", executor="ray", num_workers=2)
    assert store.manifest("b").lineage["tabular"]["sharded"]["executor"] == "ray"
    assert store.read_table("b").equals(store.read_table("a"))
    assert on_ray.result.fitted == inline.result.fitted and on_ray.result.report == inline.result.report
    store.catalog.dispose()
