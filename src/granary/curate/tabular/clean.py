"""Cleaning steps: missing values, outliers, scaling, bucketing and categorical encodings.

Each step fits its statistics in one aggregate query over its input, records them in the run's fitted
state (stored in the output version's lineage, so the same transform can be applied to new data with
``fitted=``), and returns a lazy view that applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from granary.curate.tabular.base import TabularStep, register
from granary.curate.tabular.context import TabularContext, check_column, literal, number, quote

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL",
           "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def numeric_columns(columns: dict[str, str]) -> list[str]:
    """Columns of a numeric type."""
    return [c for c, t in columns.items() if t.upper().startswith(NUMERIC)]


def _targets(ctx: TabularContext, rel: str, wanted: tuple[str, ...], where: str) -> tuple[dict[str, str], list[str]]:
    columns = ctx.columns(rel)
    for c in wanted:
        check_column(c, columns, where)
    return columns, list(wanted) or numeric_columns(columns)


def _fitted(ctx: TabularContext, step: TabularStep, given: dict[str, Any] | None,
            compute: Any) -> dict[str, Any]:
    """Statistics given in the config (re-applying a stored transform) or computed now; recorded either way."""
    stats = dict(given) if given else compute()
    ctx.fitted[step.display] = stats
    return stats


Impute = Literal["drop", "constant", "mean", "median", "mode", "ffill", "bfill", "interpolate"]


@register("impute")
@dataclass(kw_only=True, frozen=True)
class ImputeStep(TabularStep):
    """Fill or drop missing values.

    Attributes:
        strategy: ``drop``, ``constant``, ``mean``, ``median``, ``mode``, ``ffill``/``bfill`` (within ``by``
            in ``order_by`` order) or ``interpolate`` (linear in ``order_by``).
        columns: the columns (default: every numeric column).
        value: the fill value of ``constant``.
        by: key columns for fills and interpolation.
        order_by: the time (or order) column for fills and interpolation.
        fitted: statistics from an earlier run's lineage, to apply instead of fitting.
    """

    strategy: Impute = "mean"
    columns: tuple[str, ...] = ()
    value: Any = None
    by: tuple[str, ...] = ()
    order_by: str | None = None
    fitted: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.strategy in ("ffill", "bfill", "interpolate") and not self.order_by:
            raise ValueError(f"impute {self.strategy} needs `order_by`")
        if self.strategy == "constant" and self.value is None:
            raise ValueError("impute constant needs `value`")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _, cols = _targets(ctx, rel, self.columns, self.display)
        if not cols:
            return rel
        fns = {"mean": "avg({})", "median": "median({})", "mode": "mode({})"}
        fit_now = self.strategy in fns and not self.fitted
        # one scan: the missing counts, and the statistics when they are fitted here
        exprs = [f"count_if({quote(c)} IS NULL)" for c in cols] + \
            ([fns[self.strategy].format(quote(c)) for c in cols] if fit_now else [])
        row = ctx.one("SELECT " + ", ".join(exprs) + f" FROM {rel}")
        ctx.note(self.display, missing={c: int(n) for c, n in zip(cols, row[:len(cols)], strict=True)})
        if self.strategy == "drop":
            cond = " AND ".join(f"{quote(c)} IS NOT NULL" for c in cols)
            return ctx.view(f"SELECT * FROM {rel} WHERE {cond}")
        if self.strategy in ("ffill", "bfill", "interpolate"):
            columns = ctx.columns(rel)
            check_column(self.order_by or "", columns, self.display)
            numeric = self.order_by in numeric_columns(columns)
            cols = [c for c in cols if c != self.order_by and c not in self.by]
            repl = ", ".join(self._window(c, numeric) for c in cols)
            return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")

        def compute() -> dict[str, Any]:
            if self.strategy == "constant":
                return {c: self.value for c in cols}
            return dict(zip(cols, row[len(cols):], strict=True))

        stats = _fitted(ctx, self, self.fitted, compute)
        fills = ", ".join(f"coalesce({quote(c)}, {literal(stats[c])}) AS {quote(c)}" for c in cols)
        return ctx.view(f"SELECT * REPLACE ({fills}) FROM {rel}")

    def _window(self, col: str, numeric_order: bool) -> str:
        c = quote(col)
        part = f"PARTITION BY {', '.join(quote(b) for b in self.by)} " if self.by else ""
        order = quote(self.order_by or "")
        before = f"OVER ({part}ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        after = f"OVER ({part}ORDER BY {order} ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)"
        if self.strategy == "ffill":
            return f"coalesce({c}, last_value({c} IGNORE NULLS) {before}) AS {c}"
        if self.strategy == "bfill":
            return f"coalesce({c}, first_value({c} IGNORE NULLS) {after}) AS {c}"
        t = f"CAST({order} AS DOUBLE)" if numeric_order else f"epoch({order})"
        known_t = f"CASE WHEN {c} IS NOT NULL THEN {t} END"
        pv, nv = f"last_value({c} IGNORE NULLS) {before}", f"first_value({c} IGNORE NULLS) {after}"
        pt, nt = f"last_value({known_t} IGNORE NULLS) {before}", f"first_value({known_t} IGNORE NULLS) {after}"
        return (f"coalesce({c}, CASE WHEN {nt} = {pt} THEN {pv} ELSE {pv} + ({nv} - {pv}) * "
                f"({t} - {pt}) / ({nt} - {pt}) END, {pv}, {nv}) AS {c}")


Method = Literal["iqr", "zscore", "robust"]
Action = Literal["clip", "drop", "flag"]


@register("outliers")
@dataclass(kw_only=True, frozen=True)
class OutlierStep(TabularStep):
    """Clip, drop or flag values outside fences: IQR (Tukey), z-score, or robust z (median/MAD).

    Attributes:
        method: ``iqr`` (fences at Q1 - k*IQR, Q3 + k*IQR), ``zscore`` (|z| > k) or ``robust`` (|x - median|
            / (1.4826 MAD) > k).
        k: the fence factor (default 1.5 for iqr, 3 for the z-scores).
        action: ``clip`` to the fences, ``drop`` the row, or ``flag`` in a boolean ``<column>_outlier`` column.
        columns: the columns (default: every numeric column).
        fitted: fences from an earlier run's lineage ({column: [low, high]}).
    """

    method: Method = "iqr"
    k: float | None = None
    action: Action = "clip"
    columns: tuple[str, ...] = ()
    fitted: dict[str, Any] | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _, cols = _targets(ctx, rel, self.columns, self.display)
        if not cols:
            return rel
        k = self.k if self.k is not None else (1.5 if self.method == "iqr" else 3.0)

        def compute() -> dict[str, Any]:
            if self.method == "iqr":
                exprs = [f"quantile_cont({quote(c)}, [0.25, 0.75])" for c in cols]
            elif self.method == "zscore":
                exprs = [f"[avg({quote(c)}), stddev_pop({quote(c)})]" for c in cols]
            else:
                exprs = [f"[median({quote(c)}), 1.4826 * mad({quote(c)})]" for c in cols]
            out = {}
            for c, pair in zip(cols, ctx.one("SELECT " + ", ".join(exprs) + f" FROM {rel}"), strict=True):
                a, b = pair if pair is not None else (None, None)  # quantiles of no values: NULL, not a list
                if a is None or b is None:
                    out[c] = [None, None]
                elif self.method == "iqr":
                    out[c] = [a - k * (b - a), b + k * (b - a)]
                else:
                    out[c] = [a - k * b, b * k + a]
            return out

        fences = _fitted(ctx, self, self.fitted, compute)
        cols = [c for c in cols if fences[c][0] is not None]
        outside = {c: f"({quote(c)} < {number(fences[c][0])} OR {quote(c)} > {number(fences[c][1])})" for c in cols}
        if not cols:
            return rel
        counts = ctx.one("SELECT " + ", ".join(f"count_if({o})" for o in outside.values()) + f" FROM {rel}")
        ctx.note(self.display, changed={c: int(n) for c, n in zip(cols, counts, strict=True)}, action=self.action)
        if self.action == "clip":
            # not least/greatest: they skip NULLs, which would turn a missing value into a fence
            repl = ", ".join(f"CASE WHEN {quote(c)} < {number(fences[c][0])} THEN {number(fences[c][0])} "
                             f"WHEN {quote(c)} > {number(fences[c][1])} THEN {number(fences[c][1])} "
                             f"ELSE CAST({quote(c)} AS DOUBLE) END AS {quote(c)}" for c in cols)
            return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")
        if self.action == "drop":
            return ctx.view(f"SELECT * FROM {rel} WHERE NOT coalesce({' OR '.join(outside.values())}, FALSE)")
        flags = ", ".join(f"coalesce({o}, FALSE) AS {quote(c + '_outlier')}" for c, o in outside.items())
        return ctx.view(f"SELECT *, {flags} FROM {rel}")


Scale = Literal["standard", "minmax", "log", "robust"]


@register("scale")
@dataclass(kw_only=True, frozen=True)
class ScaleStep(TabularStep):
    """Rescale numeric columns: ``standard`` (z), ``minmax`` ([0, 1]), ``robust`` (median/IQR) or ``log`` (ln(1+x)).

    Attributes:
        method: the transform.
        columns: the columns (default: every numeric column).
        fitted: statistics from an earlier run's lineage ({column: [center, scale]}).
    """

    method: Scale = "standard"
    columns: tuple[str, ...] = ()
    fitted: dict[str, Any] | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _, cols = _targets(ctx, rel, self.columns, self.display)
        if not cols:
            return rel
        if self.method == "log":
            # NULL stays NULL (greatest() would make it 0)
            repl = ", ".join(f"ln(1 + CASE WHEN {quote(c)} < 0 THEN 0 ELSE CAST({quote(c)} AS DOUBLE) END) "
                             f"AS {quote(c)}" for c in cols)
            return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")
        exprs = {"standard": "[avg({c}), stddev_pop({c})]", "minmax": "[min({c}), max({c}) - min({c})]",
                 "robust": "[median({c}), quantile_cont({c}, 0.75) - quantile_cont({c}, 0.25)]"}[self.method]

        def compute() -> dict[str, Any]:
            row = ctx.one("SELECT " + ", ".join(exprs.format(c=quote(c)) for c in cols) + f" FROM {rel}")
            return {c: [float(v[0]) if v[0] is not None else 0.0, float(v[1]) if v[1] else 1.0]
                    for c, v in zip(cols, row, strict=True)}

        stats = _fitted(ctx, self, self.fitted, compute)
        repl = ", ".join(f"(({quote(c)} - {number(stats[c][0])}) / {number(stats[c][1])}) AS {quote(c)}" for c in cols)
        return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")


@register("bucket")
@dataclass(kw_only=True, frozen=True)
class BucketStep(TabularStep):
    """Replace numeric columns by bucket numbers 0..buckets-1, of equal ``width`` or equal ``quantile`` counts.

    Attributes:
        columns: the columns.
        buckets: how many buckets.
        method: ``width`` or ``quantile``.
        fitted: boundaries from an earlier run ({column: [b1, ..., b(n-1)]}).
    """

    columns: tuple[str, ...]
    buckets: int = 10
    method: Literal["width", "quantile"] = "quantile"
    fitted: dict[str, Any] | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _, cols = _targets(ctx, rel, self.columns, self.display)
        n = self.buckets
        cuts = [i / n for i in range(1, n)]

        def compute() -> dict[str, Any]:
            if self.method == "quantile":
                exprs = ", ".join(f"quantile_cont({quote(c)}, {cuts})" for c in cols)
                row = ctx.one(f"SELECT {exprs} FROM {rel}")
                return {c: list(v or []) for c, v in zip(cols, row, strict=True)}
            row = ctx.one("SELECT " + ", ".join(f"[min({quote(c)}), max({quote(c)})]" for c in cols) + f" FROM {rel}")
            return {c: [v[0] + (v[1] - v[0]) * q for q in cuts] if v[0] is not None else []
                    for c, v in zip(cols, row, strict=True)}

        bounds = _fitted(ctx, self, self.fitted, compute)
        repl = ", ".join(
            "CASE WHEN {c} IS NULL THEN NULL ELSE ({s})::INTEGER END AS {c}".format(
                c=quote(c), s=" + ".join(f"({quote(c)} >= {number(b)})::INTEGER" for b in bounds[c]) or "0")
            for c in cols)
        return ctx.view(f"SELECT * REPLACE ({repl}) FROM {rel}")


Encoding = Literal["onehot", "ordinal", "hash"]


@register("encode")
@dataclass(kw_only=True, frozen=True)
class EncodeStep(TabularStep):
    """Encode categorical columns: ``onehot`` (one 0/1 column per category), ``ordinal`` (codes by frequency) or
    ``hash`` (``hash(value) % buckets``).

    Attributes:
        columns: the categorical columns.
        method: the encoding.
        max_categories: the most frequent categories kept (one-hot and ordinal); others map to ``other``/-1.
        buckets: hash buckets.
        keep: keep the original column next to its encoding.
        fitted: categories from an earlier run ({column: [values...]}).
    """

    columns: tuple[str, ...]
    method: Encoding = "onehot"
    max_categories: int = 32
    buckets: int = 1024
    keep: bool = False
    fitted: dict[str, Any] | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        _targets(ctx, rel, self.columns, self.display)
        if self.method == "hash":
            repl = ", ".join(f"(hash({quote(c)}) % {self.buckets})::BIGINT AS {quote(c + '_hash')}"
                             for c in self.columns)
            return ctx.view(f"SELECT {self._base()}, {repl} FROM {rel}")

        def compute() -> dict[str, Any]:
            out = {}
            for c in self.columns:
                rows = ctx.con.execute(f"SELECT {quote(c)} FROM {rel} WHERE {quote(c)} IS NOT NULL GROUP BY 1 "
                                       f"ORDER BY count(*) DESC, 1 LIMIT {int(self.max_categories)}").fetchall()
                out[c] = [r[0] for r in rows]
            return out

        cats = _fitted(ctx, self, self.fitted, compute)
        if self.method == "ordinal":
            cols = ", ".join("CASE {c} {w} ELSE -1 END::INTEGER AS {o}".format(
                c=quote(c), o=quote(c + "_code"),
                w=" ".join(f"WHEN {literal(v)} THEN {i}" for i, v in enumerate(cats[c])) or "WHEN NULL THEN -1")
                for c in self.columns)
        else:
            cols = ", ".join(f"({quote(c)} = {literal(v)})::TINYINT AS {quote(f'{c}_{v}')}"
                             for c in self.columns for v in cats[c])
        return ctx.view(f"SELECT {self._base()}{', ' + cols if cols else ''} FROM {rel}")

    def _base(self) -> str:
        return "*" if self.keep else f"* EXCLUDE ({', '.join(quote(c) for c in self.columns)})"
