"""The same pipeline on a local Ray instance gives the same version as the in-process executor."""

from __future__ import annotations

import pyarrow as pa
import pytest

from granary.curate import PipelineSpec, curate
from granary.curate.synth import generate

pytestmark = pytest.mark.ray


def test_ray_executor_matches_inline(store, ray_instance) -> None:  # type: ignore[no-untyped-def]
    docs, _ = generate(600, seed=4)
    store.create_dataset("web")
    store.commit_table("web", pa.Table.from_pylist(docs))
    spec = PipelineSpec.from_dict({"name": "ray", "steps": ["normalize_whitespace", "gopher_quality",
                                                           "exact_dedup", "minhash_dedup", "pii"]})
    inline, _ = curate(store, "web@main", spec, "a", executor="inline", report=False)
    on_ray, _ = curate(store, "web@main", spec, "b", executor="ray", num_workers=2, report=False)
    assert on_ray.lineage["executor"] == "ray"
    assert store.read_table("b@main").equals(store.read_table("a@main"))
    assert store.read_side_table("b@main", "rejected").equals(store.read_side_table("a@main", "rejected"))
    assert on_ray.rows_out == inline.rows_out
