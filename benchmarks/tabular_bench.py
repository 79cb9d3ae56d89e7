"""Tabular benchmark: impute + IQR clip + standardise + one-hot + key dedup, Granary vs pandas vs DuckDB SQL.

    .venv/bin/python benchmarks/tabular_bench.py [--rows 10000000] [--repeat 1] [--workers 2] [--shards 8]

The same five steps run three ways on the same Arrow table, in one run: Granary's tabular pipeline
(``run_tabular``, DuckDB over Arrow, with its per-step reports), pandas (from a DataFrame already in memory:
the conversion is not timed) and a hand-written DuckDB version (two statistics queries and the final query;
the anchor Granary is held to). With ``--workers N`` (N > 0) Granary also runs shard by shard
(``curate_table_sharded`` on N local worker processes over the table committed to a scratch store in
``--shards`` shards; the commit is not timed, the sharded run's reads from and writes to the store are).
Outputs are compared; ratios printed; JSON to benchmarks/out/tabular_bench.json.
Targets (issue 15): >= 5x pandas, >= 0.8x DuckDB on 10 million rows x 20 columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from granary.config import Settings
from granary.curate.tabular import TabularPipeline, curate_table_sharded, run_tabular
from granary.store import open_store

NUM = [f"x{i}" for i in range(17)]
CATS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]


def make_table(rows: int, seed: int = 0) -> pa.Table:
    """20 columns: key (about 10% repeated), ts, cat (8 values), 17 floats with 5% nulls and 1% outliers."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {
        "key": pa.array(rng.integers(0, int(rows * 0.9), rows)),
        "ts": pa.array(rng.permutation(rows).astype(np.int64)),
        "cat": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(CATS), rows).astype(np.int32)),
                                              pa.array(CATS)).cast(pa.string()),
    }
    for name in NUM:
        x = rng.normal(10, 3, rows)
        x[rng.random(rows) < 0.01] *= 50
        cols[name] = pa.array(x, mask=rng.random(rows) < 0.05)
    return pa.table(cols)


PIPELINE = TabularPipeline.from_dict({"name": "bench", "steps": [
    {"step": "impute", "strategy": "mean", "columns": NUM},
    {"step": "outliers", "method": "iqr", "action": "clip", "columns": NUM},
    {"step": "scale", "method": "standard", "columns": NUM},
    {"step": "encode", "columns": ["cat"], "method": "onehot"},
    {"step": "dedup", "keys": ["key"], "keep": "latest", "order_by": "ts"},
]})


def granary(table: pa.Table) -> pa.Table:
    return run_tabular(PIPELINE, table, with_profile=False).table


def sharded(table: pa.Table, workers: int, shards: int) -> tuple[float, pa.Table]:
    """Granary shard by shard on ``workers`` processes: seconds of the run (store reads and writes included)."""
    home = Path(tempfile.mkdtemp(prefix="tabbench-"))
    try:
        store = open_store(Settings.from_env(home=home, shard_size_bytes=max(1024, table.nbytes // shards + 1)))
        store.create_dataset("raw", kind="table")
        store.commit_table("raw", table)
        t0 = time.perf_counter()
        curate_table_sharded(store, PIPELINE, "raw", "out", executor="local", num_workers=workers)
        seconds = time.perf_counter() - t0
        return seconds, store.read_table("out")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def pandas_version(df: pd.DataFrame) -> pd.DataFrame:
    """Idiomatic pandas: column-wise ops on the numeric block (no copy of the whole frame), one-hot with
    ``get_dummies``, and the newest row per key by a hash ``groupby().idxmax()`` (no sort of the wide rows)."""
    num = df[NUM]
    num = num.fillna(num.mean())
    q = num.quantile([0.25, 0.75])
    iqr = q.loc[0.75] - q.loc[0.25]
    num = num.clip(q.loc[0.25] - 1.5 * iqr, q.loc[0.75] + 1.5 * iqr, axis=1)
    num = (num - num.mean()) / num.std(ddof=0)
    out = pd.concat([df[["key", "ts"]], num, pd.get_dummies(df["cat"], prefix="cat", dtype=np.int8)], axis=1)
    return out.loc[df.groupby("key", sort=False)["ts"].idxmax()]


def duckdb_version(table: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.register("t", table)
    means = con.execute("SELECT " + ", ".join(f"avg({c})" for c in NUM) + " FROM t").fetchall()[0]
    filled = {c: f"coalesce({c}, {m!r})" for c, m in zip(NUM, means, strict=True)}
    quart = con.execute("SELECT " + ", ".join(f"quantile_cont({filled[c]}, [0.25, 0.75])" for c in NUM)
                        + " FROM t").fetchall()[0]
    clipped = {c: f"least(greatest({filled[c]}, {q[0] - 1.5 * (q[1] - q[0])!r}), {q[1] + 1.5 * (q[1] - q[0])!r})"
               for c, q in zip(NUM, quart, strict=True)}
    stats = con.execute("SELECT " + ", ".join(f"avg({clipped[c]}), stddev_pop({clipped[c]})" for c in NUM)
                        + ", list(DISTINCT cat) FROM t").fetchall()[0]
    cats = sorted(stats[-1])
    scaled = ", ".join(f"({clipped[c]} - {stats[2 * i]!r}) / {stats[2 * i + 1]!r} AS {c}" for i, c in enumerate(NUM))
    onehot = ", ".join(f"(cat = '{v}')::TINYINT AS cat_{v}" for v in cats)
    out = con.sql(f"SELECT key, ts, {scaled}, {onehot} FROM t "
                  "QUALIFY row_number() OVER (PARTITION BY key ORDER BY ts DESC) = 1").to_arrow_table()
    con.close()
    return out


def timed(fn, arg, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="sharded run's worker processes (0: no sharded run)")
    parser.add_argument("--shards", type=int, default=8, help="shards of the sharded run's input version")
    args = parser.parse_args()
    load_start = os.getloadavg()
    table = make_table(args.rows)
    df = table.to_pandas()
    t_granary, g = timed(granary, table, args.repeat)
    t_duck, d = timed(duckdb_version, table, args.repeat)
    t_pandas, p = timed(pandas_version, df, args.repeat)
    t_sharded, sh = sharded(table, args.workers, args.shards) if args.workers else (None, None)
    g = g.sort_by("key")  # type: ignore[attr-defined]
    d = d.sort_by("key")  # type: ignore[attr-defined]
    p = p.sort_values("key")  # type: ignore[attr-defined]
    assert g.num_rows == d.num_rows == len(p), (g.num_rows, d.num_rows, len(p))
    for c in NUM[:3]:
        np.testing.assert_allclose(g.column(c).to_numpy(), d.column(c).to_numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(g.column(c).to_numpy(), p[c].to_numpy(), rtol=1e-6, atol=1e-9)
    if sh is not None:
        sh = sh.sort_by("key")
        assert sh.num_rows == g.num_rows and sh.column("ts").equals(g.column("ts"))
        for c in NUM:
            np.testing.assert_allclose(sh.column(c).to_numpy(), g.column(c).to_numpy(), rtol=1e-9, atol=1e-9)
    result = {"rows": args.rows, "columns": table.num_columns, "rows_out": g.num_rows,
              "granary_s": round(t_granary, 3), "duckdb_s": round(t_duck, 3), "pandas_s": round(t_pandas, 3),
              "vs_pandas": round(t_pandas / t_granary, 2), "vs_duckdb": round(t_duck / t_granary, 2),
              "sharded_s": None if t_sharded is None else round(t_sharded, 3),
              "sharded_workers": args.workers, "sharded_shards": args.shards,
              "sharded_vs_pandas": None if t_sharded is None else round(t_pandas / t_sharded, 2),
              "targets": {"vs_pandas": 5.0, "vs_duckdb": 0.8}, "load_avg_start": load_start,
              "load_avg": os.getloadavg(),
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "tabular_bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
