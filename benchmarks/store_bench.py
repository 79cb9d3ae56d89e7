"""Store benchmark: ingest vs a plain pyarrow JSON read + Parquet write, verify GB/s, 1,000-shard commit.

Runs Granary and the anchor side by side on the same generated JSONL file, each in its own child
process so that peak RSS is measured separately, and prints ratios.

    .venv/bin/python benchmarks/store_bench.py --size-mb 2048
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("data shard model token train the of and to in is that for with as on by this from at storage "
         "catalog version commit branch checksum stream loader cluster gradient").split()


def make_jsonl(path: Path, size_mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    target = size_mb * 1024 * 1024
    written = 0
    i = 0
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 900))) for _ in range(512)]
    with open(path, "w") as f:
        while written < target:
            rec = {"id": f"doc-{i}", "text": paragraphs[i % 512] + f" {i}", "source": "web", "score": i % 97 / 97}
            line = json.dumps(rec) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    return i


def child(mode: str, src: str, work: str) -> None:
    start = time.perf_counter()
    if mode == "anchor":
        import pyarrow.json as pajson
        import pyarrow.parquet as pq

        table = pajson.read_json(src)
        pq.write_table(table, os.path.join(work, "anchor.parquet"))
        rows = table.num_rows
    else:
        from granary.config import Settings
        from granary.store import open_store
        from granary.store.ingest import ingest

        store = open_store(Settings.from_env(home=work))
        rows = ingest(store, [src], "bench").records
    took = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "seconds": took, "rows": rows, "rss_mb": rss_mb}))


def run_child(mode: str, src: Path, work: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(work)], check=False,
                         capture_output=True, text=True)
    if out.returncode != 0:  # show the child's own error, not only its exit code
        sys.stderr.write(out.stderr[-8000:])
        raise SystemExit(f"the {mode} ingest child failed with exit code {out.returncode} (its error is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_verify(work: Path) -> dict[str, float]:
    from granary.config import Settings
    from granary.store import open_store

    store = open_store(Settings.from_env(home=work))
    store.verify("bench")  # warm the page cache
    best = min((store.verify("bench") for _ in range(3)), key=lambda r: r.seconds)
    return {"bytes": best.bytes, "seconds": best.seconds, "gb_s": best.bytes / best.seconds / 1e9}


def bench_commit(work: Path) -> float:
    from granary.config import Settings
    from granary.store import open_store
    from granary.store.manifest import ShardEntry

    home = work / "commit"
    shutil.rmtree(home, ignore_errors=True)  # a fresh catalog on every run, so --work DIR can be re-used
    store = open_store(Settings.from_env(home=home))
    store.create_dataset("big")
    times = []
    for r in range(5):
        entries = [ShardEntry(key=f"datasets/big/data/00/{r:04d}{i:028x}.parquet", rows=1000, bytes=1 << 27,
                              checksum=f"{r:04d}{i:028x}", format="parquet") for i in range(1000)]
        with store.transaction("big", mode="overwrite") as txn:
            txn.add_shards(entries)
            start = time.perf_counter()
            txn.commit(message=f"1k shards #{r}")
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="granary-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "input.jsonl"
    if not src.exists() or src.stat().st_size < args.size_mb * 1024 * 1024 * 0.99:
        rows = make_jsonl(src, args.size_mb)
        print(f"generated {src} ({src.stat().st_size / 1e9:.2f} GB, {rows:,} records)")
    size = src.stat().st_size
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # page cache for both
    results = {}
    for mode in ("anchor", "granary", "anchor", "granary"):
        sub = work / f"{mode}-home"
        subprocess.run(["rm", "-rf", str(sub)], check=True)
        sub.mkdir()
        r = run_child(mode, src, sub)
        prev = results.get(mode)
        if prev is None or r["seconds"] < prev["seconds"]:
            results[mode] = r
    g, a = results["granary"], results["anchor"]
    verify = bench_verify(work / "granary-home")
    commit_s = bench_commit(work)
    print(f"\ninput: {size / 1e9:.2f} GB JSONL, {g['rows']:,} records (best of 2 runs each)")
    print(f"{'':28}{'granary':>12}{'pyarrow':>12}{'ratio':>8}")
    print(f"{'ingest MB/s':28}{size / 1e6 / g['seconds']:>12.1f}{size / 1e6 / a['seconds']:>12.1f}"
          f"{a['seconds'] / g['seconds']:>8.2f}x   (target >= 0.80x)")
    print(f"{'peak RSS MB':28}{g['rss_mb']:>12.0f}{a['rss_mb']:>12.0f}{'':>8}   (target < 1024 MB for 2 GB)")
    print(f"{'verify GB/s (1 core)':28}{verify['gb_s']:>12.2f}{'':>12}{'':>8}   (target >= 1 GB/s)")
    print(f"{'1,000-shard commit s':28}{commit_s:>12.3f}{'':>12}{'':>8}   (target < 1 s, SQLite)")


if __name__ == "__main__":
    main()
