"""Tabular cleaning and combining steps: values checked against numpy/pandas-free reference computations."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.curate.tabular import TabularPipeline, run_tabular
from granary.errors import CurateError


def run(steps: list[dict], table: pa.Table, **sources: pa.Table):  # type: ignore[no-untyped-def, type-arg]
    spec = TabularPipeline.from_dict({"steps": steps, "sources": {k: k for k in sources}})
    return run_tabular(spec, table, sources=sources)


@pytest.mark.parametrize(("strategy", "expected"), [
    ("mean", 3.0), ("median", 2.0), ("mode", 2.0), ("constant", -1.0)])
def test_impute_fills_with_the_fitted_statistic(strategy: str, expected: float) -> None:
    t = pa.table({"x": pa.array([1.0, 2.0, None, 2.0, 7.0, None]), "y": ["a"] * 6})
    step = {"step": "impute", "strategy": strategy, "columns": ["x"]}
    if strategy == "constant":
        step["value"] = -1.0
    r = run([step], t)
    assert r.table.column("x").to_pylist() == [1.0, 2.0, expected, 2.0, 7.0, expected]
    assert r.report["impute"]["missing"] == {"x": 2}
    assert r.fitted["impute"] == {"x": expected}


def test_impute_fills_and_interpolates_within_keys_in_time_order() -> None:
    t = pa.table({"k": ["a", "a", "a", "b", "b", "a"], "t": [1, 2, 4, 1, 2, 5],
                  "x": pa.array([1.0, None, 5.0, None, 3.0, None])})
    ff = run([{"step": "impute", "strategy": "ffill", "columns": ["x"], "by": ["k"], "order_by": "t"}], t)
    got = {(k, ts): x for k, ts, x in zip(*(ff.table.column(c).to_pylist() for c in ("k", "t", "x")), strict=True)}
    assert got == {("a", 1): 1.0, ("a", 2): 1.0, ("a", 4): 5.0, ("a", 5): 5.0, ("b", 1): None, ("b", 2): 3.0}
    ip = run([{"step": "impute", "strategy": "interpolate", "columns": ["x"], "by": ["k"], "order_by": "t"}], t)
    got = {(k, ts): x for k, ts, x in zip(*(ip.table.column(c).to_pylist() for c in ("k", "t", "x")), strict=True)}
    assert got[("a", 2)] == pytest.approx(1.0 + (5.0 - 1.0) * (2 - 1) / (4 - 1))
    assert got[("b", 1)] == 3.0 and got[("a", 5)] == 5.0  # edges take the nearest known value


def test_impute_drop_removes_rows_with_missing_values() -> None:
    r = run([{"step": "impute", "strategy": "drop", "columns": ["x"]}], pa.table({"x": pa.array([1.0, None, 3.0])}))
    assert r.table.column("x").to_pylist() == [1.0, 3.0]


def test_iqr_clip_matches_numpy_and_counts_changes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 1000), [40.0, -35.0, 50.0]])
    r = run([{"step": "outliers", "method": "iqr", "columns": ["x"]}], pa.table({"x": x}))
    q1, q3 = np.quantile(x, [0.25, 0.75])
    lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    np.testing.assert_allclose(r.table.column("x").to_numpy(), np.clip(x, lo, hi))
    assert r.report["outliers"]["changed"]["x"] == int(((x < lo) | (x > hi)).sum())
    np.testing.assert_allclose(r.fitted["outliers"]["x"], [lo, hi])


def test_zscore_drop_and_robust_flag() -> None:
    x = np.array([1.0] * 50 + [2.0] * 50 + [100.0])
    dropped = run([{"step": "outliers", "method": "zscore", "action": "drop"}], pa.table({"x": x}))
    assert dropped.table.num_rows == 100
    flagged = run([{"step": "outliers", "method": "robust", "action": "flag", "k": 3.5}], pa.table({"x": x}))
    assert flagged.table.column("x_outlier").to_pylist() == [False] * 100 + [True]


@pytest.mark.parametrize("method", ["standard", "minmax", "robust", "log"])
def test_scale_matches_reference(method: str) -> None:
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    r = run([{"step": "scale", "method": method}], pa.table({"x": x}))
    ref = {"standard": (x - x.mean()) / x.std(), "minmax": (x - x.min()) / (x.max() - x.min()),
           "robust": (x - np.median(x)) / (np.quantile(x, 0.75) - np.quantile(x, 0.25)), "log": np.log1p(x)}[method]
    np.testing.assert_allclose(r.table.column("x").to_numpy(), ref)


def test_fitted_statistics_reapply_to_new_data() -> None:
    first = run([{"step": "scale", "columns": ["x"]}], pa.table({"x": [0.0, 10.0]}))
    stats = first.fitted["scale"]
    again = run([{"step": "scale", "columns": ["x"], "fitted": stats}], pa.table({"x": [5.0, 20.0]}))
    assert again.table.column("x").to_pylist() == [0.0, 3.0]


def test_bucket_quantile_and_width() -> None:
    t = pa.table({"x": [float(i) for i in range(100)]})
    q = run([{"step": "bucket", "columns": ["x"], "buckets": 4}], t).table.column("x").to_numpy()
    assert np.bincount(q).tolist() == [25, 25, 25, 25]
    w = run([{"step": "bucket", "columns": ["x"], "buckets": 2, "method": "width"}], t).table.column("x").to_numpy()
    assert w[:50].max() == 0 and w[50:].min() == 1


def test_encodings() -> None:
    t = pa.table({"c": ["b", "a", "b", "c", None], "v": [1, 2, 3, 4, 5]})
    oh = run([{"step": "encode", "columns": ["c"], "max_categories": 2}], t).table
    assert oh.column_names == ["v", "c_b", "c_a"]
    assert oh.column("c_b").to_pylist() == [1, 0, 1, 0, None]
    od = run([{"step": "encode", "columns": ["c"], "method": "ordinal", "keep": True}], t).table
    assert od.column("c_code").to_pylist() == [0, 1, 0, 2, -1]
    hs = run([{"step": "encode", "columns": ["c"], "method": "hash", "buckets": 8}], t).table
    codes = hs.column("c_hash").to_pylist()
    assert codes[0] == codes[2] and all(0 <= c < 8 for c in codes if c is not None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), min_size=1, max_size=60, unique_by=lambda r: r[1]))
def test_dedup_latest_keeps_exactly_the_newest_row_per_key(rows: list[tuple[int, int]]) -> None:
    t = pa.table({"k": [r[0] for r in rows], "ts": [r[1] for r in rows]})
    out = run([{"step": "dedup", "keys": ["k"], "order_by": "ts"}], t).table
    newest: dict[int, int] = {}
    for k, ts in rows:
        newest[k] = max(ts, newest.get(k, -1))
    assert dict(zip(out.column("k").to_pylist(), out.column("ts").to_pylist(), strict=True)) == newest
    assert out.num_rows == len(newest)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, 1, 2]), st.sampled_from(["a", "b"]),
                          st.one_of(st.none(), st.integers(0, 6))), min_size=1, max_size=40),
       st.sampled_from(["latest", "earliest"]))
def test_dedup_newest_per_compound_key_with_nulls_and_ties(rows: list[tuple], keep: str) -> None:  # type: ignore[type-arg]
    # ties and all-null order values take the window path, the rest the hash-aggregate semi join
    t = pa.table({"a": [r[0] for r in rows], "b": [r[1] for r in rows], "ts": [r[2] for r in rows],
                  "i": list(range(len(rows)))})
    out = run([{"step": "dedup", "keys": ["a", "b"], "order_by": "ts", "keep": keep}], t).table
    pick = max if keep == "latest" else min
    want: dict[tuple, int | None] = {}  # type: ignore[type-arg]
    for a, b, ts in rows:
        key = (a, b)
        known = [x for x in (want.get(key), ts) if x is not None]
        want[key] = pick(known) if known else None
    got = {(a, b): ts for a, b, ts in zip(*(out.column(c).to_pylist() for c in ("a", "b", "ts")), strict=True)}
    assert got == want
    assert out.num_rows == len(want)
    assert all(rows[i][2] == want[(rows[i][0], rows[i][1])] for i in out.column("i").to_pylist())


def test_dedup_fail_and_any() -> None:
    t = pa.table({"k": [1, 1, 2], "v": [1, 2, 3]})
    with pytest.raises(CurateError, match="differing rows"):
        run([{"step": "dedup", "keys": ["k"], "keep": "fail"}], t)
    same = pa.table({"k": [1, 1, 2], "v": [1, 1, 3]})
    assert run([{"step": "dedup", "keys": ["k"], "keep": "fail"}], same).table.num_rows == 2
    assert sorted(run([{"step": "dedup", "keys": ["k"], "keep": "any"}], t).table.column("k").to_pylist()) == [1, 2]


def test_join_conflict_rules() -> None:
    left = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "ts": [5, 5, 5]})
    right = pa.table({"id": [1, 2], "name": ["A", "B"], "ts": [9, 1], "extra": [10, 20]})

    def names(rule: str) -> list[str | None]:
        t = run([{"step": "join", "right": "r", "on": ["id"], "conflict": rule, "order_by": "ts"}], left, r=right).table
        return t.sort_by("id").column("name").to_pylist()

    assert names("left") == ["a", "B", "c"]
    assert names("right") == ["A", "B", "c"]
    assert names("latest") == ["A", "B", "c"]
    with pytest.raises(CurateError, match="disagree"):
        names("fail")


def test_union_with_priority_latest_and_fail() -> None:
    a = pa.table({"id": [1, 2], "v": ["a1", "a2"], "ts": [1, 9]})
    b = pa.table({"id": [2, 3], "v": ["b2", "b3"], "ts": [5, 5]})

    def values(conflict: str) -> list[str]:
        steps = [{"step": "union", "sources": ["b"], "keys": ["id"], "conflict": conflict, "order_by": "ts"}]
        return run(steps, a, b=b).table.sort_by("id").column("v").to_pylist()

    assert values("priority") == ["a1", "a2", "b3"]
    assert values("latest") == ["a1", "a2", "b3"]
    with pytest.raises(CurateError, match="differing rows"):
        values("fail")
    plain = run([{"step": "union", "sources": ["b"]}], a, b=b).table
    assert plain.num_rows == 4


def test_aggregate_and_filter() -> None:
    t = pa.table({"g": ["x", "y", "x", "y", "x"], "v": [1.0, 2.0, 3.0, 4.0, 100.0]})
    out = run([{"step": "filter", "where": "v < 50"},
               {"step": "aggregate", "by": ["g"], "aggs": {"n": "count:*", "total": "sum:v", "mean": "avg:v"}}], t)
    got = {r["g"]: (r["n"], r["total"], r["mean"]) for r in out.table.to_pylist()}
    assert got == {"x": (2, 4.0, 2.0), "y": (2, 6.0, 3.0)}


@pytest.mark.parametrize(("target", "per_class"), [("min", 10), ("max", 90), (30, 30)])
def test_rebalance_to_target_with_class_weights(target: str | int, per_class: int) -> None:
    t = pa.table({"label": ["rare"] * 10 + ["common"] * 90, "x": list(range(100))})
    r = run([{"step": "rebalance", "column": "label", "target": target}], t)
    counts = dict(zip(*np.unique(r.table.column("label").to_numpy(zero_copy_only=False), return_counts=True),
                      strict=True))
    assert counts == {"rare": per_class, "common": per_class}
    weights = r.fitted["rebalance"]["class_weights"]
    assert math.isclose(weights["rare"], 100 / (2 * 10)) and math.isclose(weights["common"], 100 / (2 * 90))
    assert r.report["rebalance"]["before"] == {"rare": 10, "common": 90}
    if target == "min":  # undersampling keeps distinct original rows
        assert len(set(r.table.column("x").to_pylist())) == 20


def test_yaml_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    spec = TabularPipeline.from_dict({"name": "p", "steps": [
        {"step": "validate", "rules": [{"rule": "range", "column": "a", "min": 0}]},
        {"step": "impute", "strategy": "median"}, {"step": "dedup", "keys": ["a"], "keep": "any"}]})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict()))
    assert TabularPipeline.from_yaml(path) == spec


def test_clip_and_log_keep_missing_values_missing() -> None:
    t = pa.table({"x": pa.array([1.0, None, 3.0, 100.0, 2.0, 2.5])})
    clipped = run([{"step": "outliers", "columns": ["x"]}], t).table.column("x").to_pylist()
    assert clipped[1] is None and clipped[3] < 100.0 and clipped[0] == 1.0
    logged = run([{"step": "scale", "method": "log", "columns": ["x"]}], t).table.column("x").to_pylist()
    assert logged[1] is None and logged[0] == math.log(2.0)


def test_fitted_floats_are_doubles_not_decimals_and_nan_is_valid_sql() -> None:
    t = pa.table({"i": pa.array([1, 5, 10**12]), "x": pa.array([1.0, 2.0, 3.0])})
    fence = 1234567.8901234567
    r = run([{"step": "outliers", "columns": ["i"], "fitted": {"i": [0.5, fence]}},
             {"step": "scale", "columns": ["x"], "fitted": {"x": [float("nan"), 1.0]}}], t)
    assert r.table.schema.field("i").type == pa.float64()
    assert r.table.column("i").to_pylist() == [1.0, 5.0, fence]
    assert all(math.isnan(v) for v in r.table.column("x").to_pylist())
    inf = run([{"step": "scale", "columns": ["x"], "fitted": {"x": [0.0, float("inf")]}}], t)
    assert inf.table.column("x").to_pylist() == [0.0, 0.0, 0.0]


def test_iqr_fences_of_a_column_without_values_leave_it_alone() -> None:
    t = pa.table({"x": pa.array([None, None], type=pa.float64())})
    r = run([{"step": "outliers", "columns": ["x"]}], t)
    assert r.table.column("x").to_pylist() == [None, None] and r.fitted["outliers"] == {"x": [None, None]}
