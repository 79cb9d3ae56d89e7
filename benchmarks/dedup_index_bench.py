"""Streaming dedup index: per-micro-batch cost with 1M keys known, incremental index vs a rebuild per batch.

    .venv/bin/python benchmarks/dedup_index_bench.py [--known 1000000] [--batch 10000] [--batches 20]

Granary's ``KeyIndex`` (sorted 64-bit code runs, merged log-structured, exact key check) against the
previous design, run side by side: all known keys concatenated after each commit and a batch checked with one
``pyarrow.compute.is_in`` (which hashes the whole value set on every call). Each batch is half known keys,
half new; filter + commit is timed. Integer and string keys. JSON to benchmarks/out/dedup_index_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.live.dedup import KeyIndex


class RebuildIndex:
    """The anchor: the previous KeyIndex algorithm (set rebuilt per batch)."""

    def __init__(self, known: pa.Array) -> None:
        self.known = [known]

    def filter_commit(self, key: pa.Array) -> int:
        merged = pa.concat_arrays(self.known) if len(self.known) > 1 else self.known[0]
        self.known = [merged]
        fresh = pc.invert(pc.is_in(key, value_set=merged))
        idx = pa.array(np.arange(len(key), dtype=np.int64))
        firsts = (pa.table({"k": key, "i": idx}).filter(fresh).group_by("k", use_threads=False)
                  .aggregate([("i", "min")]).column("i_min"))
        self.known.append(key.take(firsts.combine_chunks()))
        return len(firsts)


def batches(known: int, batch: int, count: int, as_str: bool) -> tuple[pa.Array, list[pa.Array]]:
    rng = np.random.default_rng(0)
    base = np.arange(known, dtype=np.int64) * 2
    out = []
    for i in range(count):
        old = rng.choice(base, batch // 2)
        new = known * 2 + i * batch + np.arange(batch - batch // 2) * 2 + 1
        out.append(np.concatenate([old, new]))
    conv = (lambda a: pa.array([f"user-{x:012d}" for x in a])) if as_str else pa.array
    return conv(base), [conv(b) for b in out]


def run(known: int, batch: int, count: int, as_str: bool) -> dict[str, float]:
    base, work = batches(known, batch, count, as_str)
    index = KeyIndex(("k",))
    index._add(base)  # as load() does from the branch
    anchor = RebuildIndex(base)
    t_new = t_old = 0.0
    for b in work:
        t0 = time.perf_counter()
        out, _ = index.filter(pa.table({"k": b}), where="bench")
        index.commit()
        t1 = time.perf_counter()
        kept_old = anchor.filter_commit(b)
        t_old += time.perf_counter() - t1
        t_new += t1 - t0
        assert out.num_rows == kept_old, (out.num_rows, kept_old)
    return {"incremental_ms": round(1000 * t_new / count, 2), "rebuild_ms": round(1000 * t_old / count, 2),
            "speedup": round(t_old / t_new, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--known", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    result = {"known": args.known, "batch": args.batch,
              "int": run(args.known, args.batch, args.batches, False),
              "str": run(args.known, args.batch, args.batches, True),
              "load_avg": os.getloadavg(), "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "dedup_index_bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
