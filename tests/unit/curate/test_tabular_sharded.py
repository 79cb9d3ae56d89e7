"""Sharded tabular runs: exact merged statistics, the same output as one process, resume after a failure."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granary.config import Settings
from granary.curate.errors import PipelineSpecError
from granary.curate.executors.base import InlineExecutor
from granary.curate.tabular import TabularPipeline, curate_table, curate_table_sharded
from granary.curate.tabular import partial as P
from granary.store import open_store

STEPS: list[dict[str, Any]] = [
    {"step": "validate", "rules": [{"rule": "range", "column": "y", "min": -2.5}]},
    {"step": "impute", "strategy": "median", "columns": ["x"]},
    {"step": "outliers", "method": "iqr", "action": "clip", "columns": ["x"]},
    {"step": "outliers", "label": "rob", "method": "robust", "action": "flag", "columns": ["y"]},
    {"step": "scale", "method": "standard", "columns": ["x", "y"]},
    {"step": "bucket", "columns": ["y"], "buckets": 4},
    {"step": "encode", "columns": ["cat"], "method": "onehot"},
    {"step": "dedup", "keys": ["key"], "keep": "latest", "order_by": "ts"},
]


_NAMES = itertools.count()


def table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, n)
    x[rng.random(n) < 0.02] *= 50
    return pa.table({"key": rng.integers(0, max(1, n * 2 // 3), n), "ts": rng.permutation(n),
                     "cat": rng.choice(["a", "b", "c"], n), "x": pa.array(x, mask=rng.random(n) < 0.05),
                     "y": rng.normal(0, 1, n)})


def assert_same(a: pa.Table, b: pa.Table) -> None:
    """Same rows and columns; floats equal up to the rounding of merged means and deviations."""
    a, b = a.sort_by("key"), b.sort_by("key")
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert x.null_count == y.null_count
            np.testing.assert_allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                       rtol=1e-12, atol=1e-12)
        else:
            assert x.equals(y), name


@pytest.fixture
def small_shards(tmp_path):  # type: ignore[no-untyped-def]
    s = open_store(Settings.from_env(home=tmp_path / "g", shard_size_bytes=16 * 1024, row_group_bytes=4096))
    yield s
    s.catalog.dispose()


@given(parts=st.lists(st.lists(st.integers(-6, 6), max_size=200), min_size=1, max_size=5),
       points=st.integers(1, 20), qs=st.lists(st.floats(0, 1), min_size=1, max_size=4))
@settings(max_examples=150, deadline=None)
def test_two_round_quantiles_equal_the_quantiles_of_all_values(parts: list[list[int]], points: int,
                                                               qs: list[float]) -> None:
    arrays = [np.array(p, dtype=float) / 2 for p in parts]
    every = np.concatenate(arrays)
    n = len(every)
    if not n:
        return
    sketches = [P.Sketch.of(a, points) for a in arrays]
    for q in qs:
        lo, hi, frac = P.quantile_ranks(n, q)
        (b1, b2) = P.brackets(sketches, [lo, hi])
        got = P.interpolate(P.order_statistic(lo, [P.window(a, *b1) for a in arrays]),
                            P.order_statistic(hi, [P.window(a, *b2) for a in arrays]), frac)
        assert got == P.exact_quantiles(every, [q])[0]
    merged = P.merge_moments([P.Moments.of(a) for a in arrays])
    assert merged.n == n and merged.min == every.min() and merged.max == every.max()
    assert merged.mean == pytest.approx(every.mean(), abs=1e-12) and merged.std == pytest.approx(every.std(), abs=1e-9)


def test_sharded_run_equals_one_process_and_does_not_depend_on_workers(small_shards) -> None:  # type: ignore[no-untyped-def]
    store = small_shards
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", table(1500, seed=0))
    assert len(store.manifest("raw").shards) >= 3
    spec = TabularPipeline.from_dict({"name": "b", "steps": STEPS})
    one = curate_table(store, spec, "raw", "one")
    inline = curate_table_sharded(store, spec, "raw", "inline", executor="inline")
    assert_same(store.read_table("one"), store.read_table("inline"))
    assert inline.result.report == one.result.report
    assert inline.result.quarantine.equals(one.result.quarantine)
    for label in ("impute", "outliers", "rob", "encode"):  # exact quantiles and categories
        assert inline.result.fitted[label] == one.result.fitted[label], label
    for label, col in (("scale", "x"), ("bucket", "y")):  # of means and deviations
        np.testing.assert_allclose(inline.result.fitted[label][col], one.result.fitted[label][col], rtol=1e-12)
    assert inline.result.profile["rows"] == one.result.profile["rows"] == inline.version.num_rows
    assert inline.result.profile["columns"]["cat_a"]["max"] == 1.0
    fewer = TabularPipeline.from_dict({"name": "p", "steps": [STEPS[2], STEPS[4], STEPS[-1]]})
    inline = curate_table_sharded(store, fewer, "raw", "inline2", executor="inline")
    procs = curate_table_sharded(store, fewer, "raw", "procs", executor="local", num_workers=2)
    assert store.read_table("inline2").equals(store.read_table("procs"))  # bit for bit
    assert inline.result.fitted == procs.result.fitted and inline.result.report == procs.result.report
    lineage = store.manifest("procs").lineage
    assert lineage["inputs"] == [store.resolve("raw").id]
    assert lineage["tabular"]["sharded"]["shards"] == len(store.manifest("raw").shards)


class _Dies(InlineExecutor):
    """Runs tasks in this process and fails after ``after`` of them, as a killed run would stop."""

    def __init__(self, after: int) -> None:
        self.after, self.ran = after, 0

    def map(self, fn, tasks, on_result) -> None:  # type: ignore[no-untyped-def]
        for t in tasks:
            if self.ran == self.after:
                raise KeyboardInterrupt("stopped")
            on_result(fn(t))
            self.ran += 1


def test_an_interrupted_run_resumes_without_redoing_finished_shards(small_shards) -> None:  # type: ignore[no-untyped-def]
    store = small_shards
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", table(2000, seed=3))
    shards = len(store.manifest("raw").shards)
    spec = TabularPipeline.from_dict({"name": "r", "steps": STEPS[1:3] + STEPS[-1:]})
    reference = curate_table_sharded(store, spec, "raw", "ref", executor="inline")
    stop_after = 2 * shards + 1  # the median's two rounds, one shard of the iqr sketch round
    with pytest.raises(KeyboardInterrupt):
        curate_table_sharded(store, spec, "raw", "out", executor=_Dies(stop_after))
    counting = _Dies(10**9)
    resumed = curate_table_sharded(store, spec, "raw", "out", executor=counting)
    assert resumed.resumed_tasks == stop_after
    assert counting.ran == 6 * shards - stop_after  # 6 rounds: median x2, iqr x2, dedup, apply
    assert store.read_table("out").equals(store.read_table("ref"))
    assert resumed.result.fitted == reference.result.fitted


def test_steps_without_a_sharded_form_are_refused_with_the_reason(small_shards) -> None:  # type: ignore[no-untyped-def]
    spec = TabularPipeline.from_dict({"steps": [{"step": "validate", "rules": [{"rule": "unique", "column": "k"}]}]})
    with pytest.raises(PipelineSpecError, match="unique rule needs every row"):
        curate_table_sharded(small_shards, spec, "raw", "out")


@given(rows=st.lists(st.tuples(st.integers(0, 15), st.one_of(st.none(), st.integers(-50, 50)),
                               st.sampled_from(["p", "q", "r"])), min_size=1, max_size=60),
       splits=st.integers(1, 4), strategy=st.sampled_from(["mean", "median", "mode"]))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_small_tables_give_the_one_process_output(small_shards, rows: list[tuple[Any, ...]], splits: int,
                                                        strategy: str) -> None:
    store = small_shards
    name = f"t{next(_NAMES)}"
    t = pa.table({"key": [r[0] for r in rows], "ts": list(range(len(rows))),
                  "v": pa.array([r[1] for r in rows], type=pa.float64()), "c": [r[2] for r in rows]})
    store.create_dataset(name, kind="table")
    step = len(rows) // splits + 1
    with store.transaction(name) as txn:  # one shard per slice
        txn.add_shards([store.write_shard(name, t.slice(i, step)) for i in range(0, len(rows), step)])
        txn.commit(message="slices")
    spec = TabularPipeline.from_dict({"steps": [
        {"step": "impute", "strategy": strategy, "columns": ["v"]},
        {"step": "outliers", "method": "iqr", "action": "clip", "columns": ["v"]},
        {"step": "scale", "method": "minmax", "columns": ["v"]},
        {"step": "encode", "columns": ["c"], "method": "ordinal"},
        {"step": "dedup", "keys": ["key"], "keep": "latest", "order_by": "ts"}]})
    if strategy == "mode":  # a tie between modes is broken differently by DuckDB: give one mode
        spec = dataclasses.replace(spec, steps=(dataclasses.replace(spec.steps[0], strategy="constant", value=1.5),
                                                *spec.steps[1:]))
    one = curate_table(store, spec, name, name + "-one")
    sharded = curate_table_sharded(store, spec, name, name + "-sh", executor="inline")
    assert_same(store.read_table(name + "-one"), store.read_table(name + "-sh"))
    assert one.result.report == sharded.result.report


CHILD = """
import sys
from granary.config import Settings
from granary.curate.tabular import TabularPipeline, curate_table_sharded
from granary.store import open_store
store = open_store(Settings.from_env(home=sys.argv[1], shard_size_bytes=16384, row_group_bytes=4096))
curate_table_sharded(store, TabularPipeline.from_dict({steps!r}), "raw", "out", executor="inline")
"""


def test_sigkill_of_a_real_run_then_rerun_gives_the_same_version(small_shards) -> None:  # type: ignore[no-untyped-def]
    store = small_shards
    store.create_dataset("raw", kind="table")
    store.commit_table("raw", table(2000, seed=4))
    spec = {"name": "k", "steps": STEPS[1:3] + STEPS[-1:]}
    reference = curate_table_sharded(store, TabularPipeline.from_dict(spec), "raw", "ref", executor="inline")
    home = store.settings.home
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(steps=spec), str(home)], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(home.glob("work/tabular-*/fit-001-0/u*.pkl")):  # polled, not slept on: killed mid-run
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(home.glob("work/tabular-*/fit-*/u*.pkl")))
    resumed = curate_table_sharded(store, TabularPipeline.from_dict(spec), "raw", "out", executor="inline")
    assert resumed.resumed_tasks >= finished >= 2 * len(store.manifest("raw").shards) + 1
    assert store.read_table("out").equals(store.read_table("ref"))
    assert resumed.result.fitted == reference.result.fitted
