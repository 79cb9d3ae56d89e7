"""Tabular steps fitted with SciPy/scikit-learn: power transforms, isolation forest, target encoding, SMOTE."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from granary.curate.tabular import TabularPipeline, run_tabular


def run(steps: list[dict], table: pa.Table):  # type: ignore[no-untyped-def, type-arg]
    return run_tabular(TabularPipeline.from_dict({"steps": steps}), table)


@pytest.mark.parametrize("method", ["yeo-johnson", "box-cox"])
def test_power_matches_scipy(method: str) -> None:
    x = np.random.default_rng(0).lognormal(0, 1, 5000)
    if method == "yeo-johnson":
        x = x - 1.0  # some negative values
    r = run([{"step": "power", "method": method}], pa.table({"x": x}))
    ref, lam = (stats.boxcox(x) if method == "box-cox" else stats.yeojohnson(x))
    assert r.fitted["power"]["x"] == pytest.approx(lam, rel=1e-3)
    np.testing.assert_allclose(r.table.column("x").to_numpy(), ref, rtol=1e-3, atol=1e-6)
    assert abs(stats.skew(r.table.column("x").to_numpy())) < abs(stats.skew(x)) / 5


def test_box_cox_refuses_non_positive_values() -> None:
    with pytest.raises(ValueError, match="yeo-johnson"):
        run([{"step": "power", "method": "box-cox"}], pa.table({"x": [1.0, 0.0, 2.0]}))


def test_isolation_forest_flags_the_planted_points() -> None:
    rng = np.random.default_rng(1)
    pts = rng.normal(0, 1, (2000, 2))
    pts[:10] = rng.uniform(8, 10, (10, 2))
    t = pa.table({"a": pts[:, 0], "b": pts[:, 1], "id": np.arange(2000)})
    r = run([{"step": "isolation_forest", "columns": ["a", "b"], "contamination": 0.005, "action": "drop"}], t)
    kept = set(r.table.column("id").to_pylist())
    assert not kept & set(range(10)) and len(kept) == 1990


def test_target_encoding_is_out_of_fold_and_smoothed() -> None:
    # every row of category "a" has target 1; out of fold, a row's own target never counts
    t = pa.table({"c": ["a"] * 50 + ["b"] * 50, "y": [1.0] * 50 + [0.0] * 50})
    r = run([{"step": "target_encode", "columns": ["c"], "target": "y", "folds": 5, "smoothing": 0.0}], t)
    te = dict(zip(r.table.column("c").to_pylist(), r.table.column("c_te").to_pylist(), strict=False))
    assert te == {"a": 1.0, "b": 0.0}
    leak = pa.table({"c": [f"u{i}" for i in range(100)], "y": [float(i % 2) for i in range(100)]})
    r2 = run([{"step": "target_encode", "columns": ["c"], "target": "y", "smoothing": 10.0}], leak)
    # unique categories: out of fold, every row falls back to the prior, so the encoding cannot leak y
    assert set(np.round(r2.table.column("c_te").to_numpy(), 9)) == {0.5}
    assert r2.fitted["target_encode"]["prior"] == 0.5


def test_smote_balances_with_points_inside_the_minority_hull() -> None:
    rng = np.random.default_rng(2)
    major = rng.normal(0, 1, (300, 2))
    minor = rng.normal(5, 0.5, (30, 2))
    x = np.vstack([major, minor])
    t = pa.table({"f1": x[:, 0], "f2": x[:, 1], "label": ["maj"] * 300 + ["min"] * 30})
    r = run([{"step": "smote", "column": "label"}], t)
    labels = np.array(r.table.column("label").to_pylist())
    assert (labels == "min").sum() == (labels == "maj").sum() == 300
    new = r.table.slice(330)
    f1 = new.column("f1").to_numpy()
    assert f1.min() >= minor[:, 0].min() - 1e-9 and f1.max() <= minor[:, 0].max() + 1e-9
    assert r.report["smote"]["synthetic"] == 270
