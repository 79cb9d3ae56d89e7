"""Steps over rows and sources: key dedup, joins and unions with conflict rules, filters, group-by, sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from granary.curate.tabular.base import TabularStep, register
from granary.curate.tabular.context import TabularContext, check_column, quote
from granary.errors import CurateError

Keep = Literal["any", "latest", "earliest", "fail"]


def _keys(keys: tuple[str, ...]) -> str:
    return ", ".join(quote(k) for k in keys)


@register("dedup")
@dataclass(kw_only=True, frozen=True)
class DedupStep(TabularStep):
    """Keep one row per key.

    Attributes:
        keys: the key columns.
        keep: ``latest``/``earliest`` by ``order_by``, ``any`` (fastest; rows with one key are taken as
            equal), or ``fail`` when one key holds differing rows.
        order_by: the timestamp (or version) column of ``latest``/``earliest``; ties go to the larger row.
    """

    keys: tuple[str, ...]
    keep: Keep = "latest"
    order_by: str | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("dedup needs `keys`")
        if self.keep in ("latest", "earliest") and not self.order_by:
            raise ValueError(f"dedup keep={self.keep} needs `order_by`")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        columns = ctx.columns(rel)
        for k in (*self.keys, *([self.order_by] if self.order_by else [])):
            check_column(k, columns, self.display)
        keys = _keys(self.keys)
        if self.keep == "fail":
            found = ctx.con.execute(f"SELECT {keys}, count(*) FROM (SELECT DISTINCT * FROM {rel}) GROUP BY ALL "
                                    f"HAVING count(*) > 1 LIMIT 1").fetchall()
            if found:
                row = found[0]
                raise CurateError(f"step {self.display}: key {row[:-1]} holds {row[-1]} differing rows",
                                  hint="choose keep: latest (with order_by) or any, or fix the source")
            out = ctx.view(f"SELECT DISTINCT * FROM {rel}")
        elif self.keep == "any":
            out = ctx.view(f"SELECT DISTINCT ON ({keys}) * FROM {rel}")
        else:
            out = self._newest(ctx, rel)
        ctx.count_later(self.display, "rows_in", rel)
        ctx.count_later(self.display, "rows_out", out)
        return out

    def _newest(self, ctx: TabularContext, rel: str) -> str:
        """The latest (or earliest) row per key.

        A hash aggregate over the key and order columns alone picks each key's newest order value, and a
        semi join keeps the rows holding it: the wide rows stream through once and are never sorted (a
        ``row_number()`` window sorts and materialises every column, about twice as slow at 10M x 20). Where
        some key holds its newest order value twice (a tie, or all-null order values) the window decides,
        as before.
        """
        order, fn = quote(self.order_by or ""), "max" if self.keep == "latest" else "min"
        keys = _keys(self.keys)
        best = ctx.materialize(f"SELECT {keys}, {fn}(o) AS _o, arg_{fn}(n, o) AS _n FROM "
                               f"(SELECT {keys}, {order} AS o, count(*) AS n FROM {rel} GROUP BY ALL) GROUP BY ALL")
        tied = ctx.one(f"SELECT count_if(_n IS DISTINCT FROM 1) FROM {best}")[0]
        if tied:
            direction = "DESC" if self.keep == "latest" else "ASC"
            return ctx.view(f"SELECT * FROM {rel} QUALIFY row_number() OVER (PARTITION BY {keys} "
                            f"ORDER BY {order} {direction}) = 1")
        on = " AND ".join(f"r.{quote(k)} IS NOT DISTINCT FROM b.{quote(k)}" for k in self.keys)
        return ctx.view(f"SELECT r.* FROM {rel} r SEMI JOIN {best} b ON {on} AND r.{order} = b._o")


Conflict = Literal["left", "right", "latest", "fail"]


@register("join")
@dataclass(kw_only=True, frozen=True)
class JoinStep(TabularStep):
    """Join another source (a version the runner loads under the name ``right``) on key columns.

    Attributes:
        right: the source: a dataset reference (``name``, ``name@tag``...) named in the run's sources.
        on: key columns present in both.
        how: ``inner``, ``left``, ``right`` or ``full``.
        conflict: for other columns present in both: ``left`` or ``right`` wins where not null, ``latest``
            takes the side with the larger ``order_by``, ``fail`` stops when they differ.
        order_by: the timestamp column of ``conflict: latest``.
    """

    right: str
    on: tuple[str, ...]
    how: Literal["inner", "left", "right", "full"] = "left"
    conflict: Conflict = "left"
    order_by: str | None = None

    def __post_init__(self) -> None:
        if self.conflict == "latest" and not self.order_by:
            raise ValueError("join conflict=latest needs `order_by`")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        right = quote(self.right)
        lcols, rcols = ctx.columns(rel), ctx.columns(right)
        for k in self.on:
            check_column(k, lcols, self.display)
            check_column(k, rcols, f"{self.display}.right")
        both = [c for c in lcols if c in rcols and c not in self.on]
        if self.conflict == "fail" and both:
            cond = " OR ".join(f"(l.{quote(c)} IS DISTINCT FROM r.{quote(c)} AND l.{quote(c)} IS NOT NULL AND "
                               f"r.{quote(c)} IS NOT NULL)" for c in both)
            n = ctx.one(f"SELECT count(*) FROM {rel} l JOIN {right} r USING ({_keys(self.on)}) WHERE {cond}")[0]
            if n:
                raise CurateError(f"step {self.display}: {n} joined rows disagree on {both}",
                                  hint="pick conflict: left, right or latest")
        picks = []
        for c in both:
            q = quote(c)
            if self.conflict == "right":
                picks.append(f"coalesce(r.{q}, l.{q}) AS {q}")
            elif self.conflict == "latest":
                o = quote(self.order_by or "")
                picks.append(f"CASE WHEN r.{o} > l.{o} OR l.{o} IS NULL THEN coalesce(r.{q}, l.{q}) "
                             f"ELSE coalesce(l.{q}, r.{q}) END AS {q}")
            else:
                picks.append(f"coalesce(l.{q}, r.{q}) AS {q}")
        keys = [f"{quote(k)}" for k in self.on]
        lonly = [f"l.{quote(c)}" for c in lcols if c not in rcols]
        ronly = [f"r.{quote(c)}" for c in rcols if c not in lcols]
        select = ", ".join(keys + lonly + picks + ronly)
        how = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN"}[self.how]
        counts = ctx.one(f"SELECT (SELECT count(*) FROM {rel}), (SELECT count(*) FROM {right})")
        out = ctx.view(f"SELECT {select} FROM {rel} l {how} {right} r USING ({_keys(self.on)})")
        ctx.note(self.display, rows_left=int(counts[0]), rows_right=int(counts[1]), rows_out=ctx.count(out))
        return out


@register("union")
@dataclass(kw_only=True, frozen=True)
class UnionStep(TabularStep):
    """Append other sources (by column name) and settle rows that share a key.

    Attributes:
        sources: sources named in the run, in priority order after the input itself.
        keys: key columns (none: plain union, every row kept).
        conflict: ``priority`` (the input, then ``sources`` in order), ``latest`` by ``order_by``, or ``fail``.
        order_by: the timestamp column of ``latest``.
    """

    sources: tuple[str, ...]
    keys: tuple[str, ...] = ()
    conflict: Literal["priority", "latest", "fail"] = "priority"
    order_by: str | None = None

    def apply(self, ctx: TabularContext, rel: str) -> str:
        parts = [f"SELECT *, 0 AS _src FROM {rel}"] + [
            f"SELECT *, {i + 1} AS _src FROM {quote(s)}" for i, s in enumerate(self.sources)]
        unioned = ctx.view(" UNION ALL BY NAME ".join(parts))
        if not self.keys:
            return ctx.view(f"SELECT * EXCLUDE (_src) FROM {unioned}")
        keys = _keys(self.keys)
        if self.conflict == "fail":
            n = ctx.one(f"SELECT count(*) FROM (SELECT {keys} FROM (SELECT DISTINCT * EXCLUDE (_src) FROM {unioned}) "
                        f"GROUP BY ALL HAVING count(*) > 1)")[0]
            if n:
                raise CurateError(f"step {self.display}: {n} keys hold differing rows across sources",
                                  hint="pick conflict: priority or latest")
            order = "_src"
        elif self.conflict == "latest":
            order = f"{quote(self.order_by or '')} DESC, _src"
        else:
            order = "_src"
        out = ctx.view(f"SELECT * EXCLUDE (_src) FROM {unioned} QUALIFY row_number() OVER "
                       f"(PARTITION BY {keys} ORDER BY {order}) = 1")
        ctx.count_later(self.display, "rows_in", unioned)
        ctx.count_later(self.display, "rows_out", out)
        return out


@register("filter")
@dataclass(kw_only=True, frozen=True)
class FilterStep(TabularStep):
    """Keep rows where a SQL condition holds (the others are dropped and counted; use validate to quarantine).

    Attributes:
        where: a SQL boolean expression over the columns.
    """

    where: str

    def apply(self, ctx: TabularContext, rel: str) -> str:
        out = ctx.view(f"SELECT * FROM {rel} WHERE coalesce(({self.where}), FALSE)")
        ctx.count_later(self.display, "rows_in", rel)
        ctx.count_later(self.display, "rows_out", out)
        return out


AGGREGATES = ("count", "sum", "avg", "min", "max", "median", "stddev", "count_distinct", "any_value")


@register("aggregate")
@dataclass(kw_only=True, frozen=True)
class AggregateStep(TabularStep):
    """Group by columns and aggregate.

    Attributes:
        by: group columns.
        aggs: output column -> ``function:column`` (functions: see ``AGGREGATES``; ``count:*`` counts rows).
    """

    by: tuple[str, ...]
    aggs: dict[str, str]

    def __post_init__(self) -> None:
        for out, spec in self.aggs.items():
            fn, _, col = spec.partition(":")
            if fn not in AGGREGATES or not col:
                raise ValueError(f"aggregate {out}: {spec!r} is not FUNCTION:COLUMN with a function in {AGGREGATES}")

    def apply(self, ctx: TabularContext, rel: str) -> str:
        columns = ctx.columns(rel)
        exprs = []
        for out, spec in self.aggs.items():
            fn, _, col = spec.partition(":")
            if col != "*":
                check_column(col, columns, f"{self.display}.{out}")
            arg = "*" if col == "*" else quote(col)
            sql = f"count(DISTINCT {arg})" if fn == "count_distinct" else f"{fn}({arg})"
            exprs.append(f"{sql} AS {quote(out)}")
        return ctx.view(f"SELECT {_keys(self.by)}, {', '.join(exprs)} FROM {rel} GROUP BY {_keys(self.by)}")


@register("rebalance")
@dataclass(kw_only=True, frozen=True)
class RebalanceStep(TabularStep):
    """Stratified under- or over-sampling of a class column, with class weights recorded for training.

    Attributes:
        column: the class (or key) column.
        target: ``min`` (undersample every class to the smallest), ``max`` (oversample to the largest, by
            repeating rows), or a number of rows per class.
        seed: the sampling seed (the result depends on it only).
    """

    column: str
    target: str | int = "min"
    seed: int = 0

    def apply(self, ctx: TabularContext, rel: str) -> str:
        check_column(self.column, ctx.columns(rel), self.display)
        c = quote(self.column)
        before = {str(k): int(n) for k, n in ctx.con.execute(f"SELECT {c}, count(*) FROM {rel} GROUP BY 1").fetchall()}
        if not before:
            return rel
        n = min(before.values()) if self.target == "min" else max(before.values()) if self.target == "max" \
            else int(self.target)
        total = sum(before.values())
        ctx.fitted[self.display] = {"class_weights": {k: total / (len(before) * v) for k, v in before.items()},
                                    "per_class": n}
        numbered = ctx.view(f"SELECT *, row_number() OVER (PARTITION BY {c} ORDER BY hash(_r, {int(self.seed)})) - 1 "
                            f"AS _i, count(*) OVER (PARTITION BY {c}) AS _n FROM (SELECT *, row_number() OVER () "
                            f"AS _r FROM {rel})")
        out = ctx.view(f"SELECT * EXCLUDE (_r, _i, _n, _k) FROM {numbered}, range(0, CAST(ceil({n} / _n) AS BIGINT)) "
                       f"AS t(_k) WHERE _k * _n + _i < {n}")
        after = {str(k): int(v) for k, v in ctx.con.execute(f"SELECT {c}, count(*) FROM {out} GROUP BY 1").fetchall()}
        ctx.note(self.display, before=before, after=after, rows_in=total, rows_out=sum(after.values()))
        return out
