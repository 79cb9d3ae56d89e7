"""Steps fitted by SciPy or scikit-learn on a sample and applied vectorised: power transforms, isolation
forest outliers, out-of-fold target encoding and SMOTE oversampling (extra ``tabular``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from granary.curate.tabular.base import TabularStep, register
from granary.curate.tabular.clean import _fitted, _targets
from granary.curate.tabular.context import TabularContext, check_column, number, quote
from granary.errors import MissingDependencyError

FIT_SAMPLE = 200_000  # rows a model is fitted on (a seeded reservoir sample of larger inputs)


def _sample(ctx: TabularContext, rel: str, cols: list[str], seed: int) -> pa.Table:
    select = ", ".join(quote(c) for c in cols)
    return ctx.arrow(f"SELECT {select} FROM {rel} USING SAMPLE reservoir({FIT_SAMPLE} ROWS) REPEATABLE ({seed})")


def _matrix(table: pa.Table, cols: list[str]) -> np.ndarray:
    return np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols])


@register("power")
@dataclass(kw_only=True, frozen=True)
class PowerStep(TabularStep):
    """Make skewed columns more normal: ``yeo-johnson`` (any values) or ``box-cox`` (positive values only), with
    the maximum-likelihood lambda per column (SciPy, fitted on a sample).

    Attributes:
        method: ``yeo-johnson`` or ``box-cox``.
        columns: the columns (default: every numeric column).
        seed: the sampling seed.
        fitted: lambdas from an earlier run ({column: lambda}).
    """

    method: Literal["yeo-johnson", "box-cox"] = "yeo-johnson"
    columns: tuple[str, ...] = ()
    seed: int = 0
    fitted: dict[str, Any] | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _, cols = _targets(ctx, rel, self.columns, self.display)
        if not cols:
            return rel

        def compute() -> dict[str, Any]:
            from scipy import stats

            sample = _sample(ctx, rel, cols, self.seed)
            out = {}
            for c in cols:
                x = sample.column(c).drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
                if self.method == "box-cox" and (x <= 0).any():
                    raise ValueError(f"{self.display}: box-cox needs positive values, {c} has {(x <= 0).sum()} "
                                     "that are not; use method: yeo-johnson")
                if len(x) < 2:
                    out[c] = 1.0
                elif self.method == "box-cox":
                    out[c] = float(stats.boxcox_normmax(x, method="mle"))
                else:
                    out[c] = float(stats.yeojohnson_normmax(x))
            return out

        lambdas = _fitted(ctx, self, self.fitted, compute)
        repl = ", ".join(f"{self._sql(quote(c), float(lambdas[c]))} AS {quote(c)}" for c in cols)
        return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")

    def _sql(self, c: str, lam: float) -> str:
        if self.method == "box-cox":
            return f"ln({c})" if abs(lam) < 1e-12 else f"((pow({c}, {number(lam)}) - 1) / {number(lam)})"
        pos = f"ln({c} + 1)" if abs(lam) < 1e-12 else f"((pow({c} + 1, {number(lam)}) - 1) / {number(lam)})"
        mu = number(2 - lam)
        neg = f"-ln(1 - {c})" if abs(lam - 2) < 1e-12 else f"(-(pow(1 - {c}, {mu}) - 1) / {mu})"
        return f"CASE WHEN {c} >= 0 THEN {pos} ELSE {neg} END"


@register("isolation_forest")
@dataclass(kw_only=True, frozen=True)
class IsolationForestStep(TabularStep):
    """Multivariate outliers by an isolation forest (scikit-learn): ``drop`` them or ``flag`` them in ``_outlier``.

    Attributes:
        columns: numeric feature columns (default: every numeric column); rows with a missing feature are kept.
        contamination: the expected share of outliers (or ``auto``).
        action: ``drop`` or ``flag``.
        seed: the forest's and the sample's seed.
    """

    columns: tuple[str, ...] = ()
    contamination: float | str = "auto"
    action: Literal["drop", "flag"] = "flag"
    seed: int = 0

    def apply(self, ctx: TabularContext, rel: str) -> str:
        try:
            from sklearn.ensemble import IsolationForest
        except ImportError as exc:
            raise MissingDependencyError("scikit-learn", "tabular") from exc
        _, cols = _targets(ctx, rel, self.columns, self.display)
        numbered = ctx.materialize(f"SELECT row_number() OVER () AS _rid, * FROM {rel}")
        sample = _sample(ctx, numbered, cols, self.seed)
        fit_x = _matrix(sample, cols)
        model = IsolationForest(contamination=self.contamination, random_state=self.seed)
        model.fit(fit_x[~np.isnan(fit_x).any(axis=1)])
        data = ctx.arrow(f"SELECT _rid, {', '.join(quote(c) for c in cols)} FROM {numbered}")
        x = _matrix(data, cols)
        ok = ~np.isnan(x).any(axis=1)
        flags = np.zeros(len(x), dtype=bool)
        if ok.any():
            flags[ok] = model.predict(x[ok]) == -1
        ctx.register(pa.table({"_rid": data.column("_rid"), "_outlier": flags}), f"{numbered}_flags")
        ctx.note(self.display, flagged=int(flags.sum()), action=self.action)
        joined = f"SELECT {numbered}.* EXCLUDE (_rid), f._outlier FROM {numbered} JOIN {numbered}_flags f USING (_rid)"
        if self.action == "drop":
            return ctx.view(f"SELECT * EXCLUDE (_outlier) FROM ({joined}) WHERE NOT _outlier")
        return ctx.view(joined)


@register("target_encode")
@dataclass(kw_only=True, frozen=True)
class TargetEncodeStep(TabularStep):
    """Replace categories by the smoothed mean of a target, computed out of fold (a row never sees its own
    target): ``<column>_te``.

    Attributes:
        columns: categorical columns.
        target: the numeric (or 0/1) target column.
        folds: folds for the out-of-fold means (rows are assigned by a hash of their position and ``seed``).
        smoothing: weight of the global mean (a category with n rows gets n/(n+smoothing) of its own mean).
        seed: the fold assignment seed.
    """

    columns: tuple[str, ...]
    target: str
    folds: int = 5
    smoothing: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError("target_encode needs folds >= 2")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        columns = ctx.columns(rel)
        check_column(self.target, columns, self.display)
        for c in self.columns:
            check_column(c, columns, self.display)
        t = quote(self.target)
        base = ctx.materialize(f"SELECT *, hash(row_number() OVER (), {int(self.seed)}) % {self.folds} AS _fold "
                               f"FROM {rel}")
        prior = ctx.one(f"SELECT avg({t}) FROM {base}")[0] or 0.0
        m = float(self.smoothing)
        sm, pr = number(m), number(prior)
        out = base
        encodings: dict[str, Any] = {}
        for c in self.columns:
            q = quote(c)
            stats = (f"SELECT {q} AS _k, _fold, sum({t}) AS _s, count({t}) AS _n FROM {base} GROUP BY ALL")
            totals = f"SELECT _k, sum(_s) AS _ts, sum(_n) AS _tn FROM ({stats}) GROUP BY _k"
            oof = (f"SELECT s._k, s._fold, ((t._ts - s._s) + {sm} * {pr}) / ((t._tn - s._n) + {sm}) AS _te "
                   f"FROM ({stats}) s JOIN ({totals}) t ON s._k IS NOT DISTINCT FROM t._k")
            out = ctx.view(f"SELECT b.*, coalesce(o._te, {pr}) AS {quote(c + '_te')} FROM {out} b LEFT JOIN "
                           f"({oof}) o ON b.{q} IS NOT DISTINCT FROM o._k AND b._fold = o._fold")
            full = ctx.con.execute(f"SELECT CAST(_k AS VARCHAR), (_ts + {sm} * {pr}) / (_tn + {sm}) "
                                   f"FROM ({totals})").fetchall()
            encodings[c] = {str(k): float(v) for k, v in full}  # for new data: every row's target counts
        ctx.fitted[self.display] = {"prior": prior, "smoothing": m, "encodings": encodings}
        return ctx.view(f"SELECT * EXCLUDE (_fold) FROM {out}")


@register("smote")
@dataclass(kw_only=True, frozen=True)
class SmoteStep(TabularStep):
    """SMOTE: add synthetic minority rows between a row and one of its ``k`` nearest same-class neighbours
    (numeric features), until every class has as many rows as the largest.

    Attributes:
        column: the class column.
        features: numeric feature columns (default: every numeric column but ``column``); other columns of a
            synthetic row are copied from the row it was grown from.
        k: neighbours considered.
        seed: the random seed.
    """

    column: str
    features: tuple[str, ...] = ()
    k: int = 5
    seed: int = 0

    def apply(self, ctx: TabularContext, rel: str) -> str:
        try:
            from sklearn.neighbors import NearestNeighbors
        except ImportError as exc:
            raise MissingDependencyError("scikit-learn", "tabular") from exc
        columns, feats = _targets(ctx, rel, self.features, self.display)
        check_column(self.column, columns, self.display)
        feats = [f for f in feats if f != self.column]
        table = ctx.arrow(f"SELECT * FROM {rel}")
        labels = table.column(self.column).to_numpy(zero_copy_only=False)
        classes, counts = np.unique(labels, return_counts=True)
        goal = int(counts.max())
        rng = np.random.default_rng(self.seed)
        x = _matrix(table, feats)
        extra: list[pa.Table] = []
        for cls, n in zip(classes, counts, strict=True):
            idx = np.flatnonzero(labels == cls)
            need = goal - int(n)
            if need <= 0 or len(idx) < 2:
                continue
            nn = NearestNeighbors(n_neighbors=min(self.k + 1, len(idx))).fit(x[idx])
            _, neigh = nn.kneighbors(x[idx])
            base = rng.integers(0, len(idx), need)
            pick = neigh[base, rng.integers(1, neigh.shape[1], need)]
            gap = rng.random((need, 1))
            synth = x[idx[base]] + gap * (x[idx[pick]] - x[idx[base]])
            rows = table.take(pa.array(idx[base]))
            for j, f in enumerate(feats):
                rows = rows.set_column(rows.column_names.index(f), f,
                                       pa.array(synth[:, j]).cast(table.schema.field(f).type, safe=False))
            extra.append(rows)
        before = {str(c): int(n) for c, n in zip(classes, counts, strict=True)}
        ctx.note(self.display, before=before, synthetic=int(sum(t.num_rows for t in extra)))
        out = pa.concat_tables([table, *extra]) if extra else table
        return ctx.register(out)

