"""Tabular curation through the store: inputs read through it, output committed with quarantine and lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import yaml

from granary.curate.tabular import TabularPipeline, curate_table


def test_curate_table_commits_rows_quarantine_lineage_and_profile(store) -> None:  # type: ignore[no-untyped-def]
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", pa.table({"id": [1, 2, 2, 3, 4], "x": pa.array([1.0, None, 5.0, 3.0, -9.0]),
                                        "ts": [1, 2, 3, 4, 5]}))
    store.create_dataset("ids", kind="table")
    store.commit_table("ids", pa.table({"id": [1, 2, 3]}))
    spec = TabularPipeline.from_dict({"name": "clean", "sources": {"known": "ids"}, "profile_keys": ["id"], "steps": [
        {"step": "validate", "rules": [{"rule": "ref", "column": "id", "ref": "known"}]},
        {"step": "impute", "strategy": "mean", "columns": ["x"]},
        {"step": "dedup", "keys": ["id"], "order_by": "ts"}]})
    run = curate_table(store, spec, "raw", "clean")
    out = store.read_table("clean")
    assert sorted(out.column("id").to_pylist()) == [1, 2, 3]
    assert dict(zip(out.column("id").to_pylist(), out.column("x").to_pylist(), strict=True))[2] == 5.0
    q = store.read_side_table("clean", "quarantine")
    assert q is not None and json.loads(q.column("row")[0].as_py())["id"] == 4
    manifest = store.manifest("clean")
    lineage = manifest.lineage["tabular"]
    assert lineage["inputs"] == {"input": store.resolve("raw").id, "known": store.resolve("ids").id}
    assert lineage["fitted"]["impute"] == {"x": 3.0}
    assert TabularPipeline.from_dict(lineage["pipeline"]) == spec
    assert manifest.metadata["quality"]["tabular"]["duplicate_keys"] == 0
    assert run.version.kind == "table"
    from granary.store.lineage import lineage_sources

    assert sorted(lineage_sources(manifest.lineage)[0]) == sorted(lineage["inputs"].values())


def test_cli_curate_runs_a_tabular_pipeline_file(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", pa.table({"k": [1, 1, 2], "v": [1.0, 2.0, 300.0], "ts": [1, 2, 3]}))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"kind": "tabular", "name": "p", "steps": [
        {"step": "dedup", "keys": ["k"], "order_by": "ts"}, {"step": "scale", "method": "minmax"}]}))
    env = {"GRANARY_HOME": str(store.settings.home), "PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "granary.cli.main", "curate", "raw", "-p", str(path), "-o", "out",
                           "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 2 and summary["fitted"]["scale"]["v"] == [2.0, 298.0]


def test_cli_curate_shard_by_shard_with_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from granary.config import Settings
    from granary.store import open_store

    settings = Settings.from_env(home=tmp_path / "g", shard_size_bytes=8192, row_group_bytes=4096)
    store = open_store(settings)
    n = 600
    store.create_dataset("events", kind="table")
    store.commit_table("events", pa.table({"key": [i % 450 for i in range(n)], "ts": list(range(n)),
                                           "cat": [("a", "b", "c")[i % 3] for i in range(n)],
                                           **{f"x{j}": [float((i * (j + 7)) % 101) if i % 13 else None
                                                        for i in range(n)] for j in range(3)}}))
    assert len(store.manifest("events").shards) >= 2
    example = Path(__file__).parents[3] / "examples" / "tabular-features.yaml"
    env = {"GRANARY_HOME": str(settings.home), "GRANARY_SHARD_SIZE_BYTES": "8192", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "granary.cli.main", "curate", "events", "-p", str(example), "-o",
                           "features", "--workers", "2", "--json"], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    one = curate_table(store, TabularPipeline.from_yaml(example), "events", "one")
    assert summary["rows"] == one.result.rows == 450
    got, want = store.read_table("features").sort_by("key"), store.read_table("one").sort_by("key")
    assert got.column_names == want.column_names and got.column("ts").equals(want.column("ts"))
    assert summary["fitted"]["outliers"] == one.result.fitted["outliers"]
    store.catalog.dispose()
