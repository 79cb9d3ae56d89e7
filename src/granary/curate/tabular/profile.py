"""The tabular section of the quality report: completeness, distributions, key duplicates, freshness."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from granary.curate.tabular.context import TabularContext, quote

NUMERIC_PREFIXES = ("int", "uint", "float", "double", "decimal", "halffloat")


def profile(ctx: TabularContext, table: pa.Table, *, keys: tuple[str, ...] = (),
            freshness: str | None = None, top: int = 5) -> dict[str, Any]:
    """Per-column completeness and distribution, duplicates by key and the age of the newest timestamp."""
    rel = ctx.register(table)
    rows = table.num_rows
    cols: dict[str, Any] = {}
    exprs = []
    for f in table.schema:
        q = quote(f.name)
        exprs.append(f"count({q})")
        if str(f.type).startswith(NUMERIC_PREFIXES):
            exprs.append(f"[min({q})::DOUBLE, max({q})::DOUBLE, avg({q})::DOUBLE, stddev_pop({q})::DOUBLE]")
        else:
            exprs.append(f"approx_count_distinct({q})")
    values = ctx.one("SELECT " + ", ".join(exprs) + f" FROM {rel}") if table.num_columns else ()
    for i, f in enumerate(table.schema):
        present, stat = values[2 * i], values[2 * i + 1]
        entry: dict[str, Any] = {"type": str(f.type), "completeness": (present / rows) if rows else 1.0}
        if isinstance(stat, list):
            entry.update(min=stat[0], max=stat[1], mean=stat[2], std=stat[3])
        else:
            entry["distinct"] = int(stat)
            if rows and int(stat) <= 10_000:
                query = f"SELECT {quote(f.name)}, count(*) FROM {rel} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {top}"
                entry["top"] = [[str(v), int(n)] for v, n in ctx.con.execute(query).fetchall()]
        cols[f.name] = entry
    out: dict[str, Any] = {"rows": rows, "columns": cols}
    if keys:
        k = ", ".join(quote(c) for c in keys)
        out["duplicate_keys"] = int(ctx.one(f"SELECT count(*) - count(DISTINCT ({k})) FROM {rel}")[0])
    if freshness:
        newest = ctx.one(f"SELECT epoch(max({quote(freshness)})) FROM {rel}")[0]
        out["freshness"] = {"column": freshness, "newest_epoch_s": newest,
                            "age_s": None if newest is None else time.time() - float(newest)}
    return out
