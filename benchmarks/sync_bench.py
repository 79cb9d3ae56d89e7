"""Sync benchmark: `granary push` to an empty folder remote vs `rclone sync` of the same objects, then an
incremental push after changing 1% of the records.

Both copy the same content-addressed objects between two folders on this machine, with the same
parallelism. The dataset is built once (N shards of about SIZE/N bytes of incompressible text);
rounds alternate which tool goes first, and the ratio is taken per round (the machine is noisy).

    .venv/bin/python benchmarks/sync_bench.py --size-mb 1024 --objects 10000 --rounds 3
    (needs rclone: apt-get install rclone)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def build(home: Path, size_mb: int, objects: int) -> object:
    from granary.config import Settings
    from granary.store import open_store

    per = max(4096, size_mb * 1024 * 1024 // objects)
    store = open_store(Settings.from_env(home=home, shard_size_bytes=max(per, 1024), row_group_bytes=max(per, 1024)))
    store.create_dataset("big", exist_ok=True)
    rng = np.random.default_rng(0)
    rows_per_shard = 4
    text_bytes = per // rows_per_shard
    with store.transaction("big") as txn:
        for s in range(objects):
            raw = rng.integers(33, 127, size=(rows_per_shard, text_bytes), dtype=np.uint8)
            texts = [r.tobytes().decode("ascii") for r in raw]
            txn.add_shards([store.write_shard("big", pa.table({"id": [f"{s}-{i}" for i in range(rows_per_shard)],
                                                               "text": texts}))])
        txn.commit(message="bench base")
    return store


def change_one_percent(store: object, objects: int) -> tuple[object, int]:
    """Rewrite 1% of the records (those of 1% of the shards): the changed shards are new objects."""
    rng = np.random.default_rng(1)
    manifest = store.manifest("big")  # type: ignore[attr-defined]
    picked = rng.choice(len(manifest.shards), size=max(1, objects // 100), replace=False)
    new_entries = []
    for i in picked:
        table = store.read_shard(manifest.shards[i])  # type: ignore[attr-defined]
        texts = [t[:-8] + "changed!" for t in table.column("text").to_pylist()]
        new_entries.append(store.write_shard("big", table.set_column(1, "text", pa.array(texts))))  # type: ignore
    keep = [e for j, e in enumerate(manifest.shards) if j not in set(picked.tolist())]
    with store.transaction("big", mode="overwrite") as txn:  # type: ignore[attr-defined]
        txn.add_shards(keep + new_entries)
        v = txn.commit(message="1% changed")
    return v, sum(e.bytes for e in new_entries)


def granary_push(store: object, dest: Path, jobs: int) -> tuple[float, object]:
    from granary.store.sync import Remote, TransferOptions, push

    t0 = time.perf_counter()
    report = push(store, "big", Remote(str(dest)), options=TransferOptions(jobs=jobs))
    return time.perf_counter() - t0, report


def rclone_sync(src: Path, dest: Path, jobs: int) -> tuple[float, float]:
    """rclone's time alone, and with the copy made durable (`sync`), which a push guarantees before its ref moves."""
    t0 = time.perf_counter()
    subprocess.run(["rclone", "sync", str(src), str(dest), f"--transfers={jobs}", f"--checkers={jobs}",
                    "--local-no-check-updated"], check=True, capture_output=True)
    alone = time.perf_counter() - t0
    os.sync()
    return alone, time.perf_counter() - t0


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1200, help="text generated (stored ~0.86x: about 1 GB)")
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="reuse the dataset a previous run built in --work")
    args = ap.parse_args()
    if shutil.which("rclone") is None:
        sys.exit("rclone is not installed: apt-get install rclone")
    work = args.work or Path(tempfile.mkdtemp(prefix="granary-sync-bench-"))
    t0 = time.perf_counter()
    if args.reuse and (work / "home").exists():
        from granary.config import Settings
        from granary.store import open_store

        store = open_store(Settings.from_env(home=work / "home"))
    else:
        drop(work)
        work.mkdir(parents=True)
        store = build(work / "home", args.size_mb, args.objects)
    size = sum(e.bytes for e in store.manifest("big").shards)  # type: ignore[attr-defined]
    print(f"dataset: {args.objects:,} shards, {size / 1e9:.2f} GB, built in {time.perf_counter() - t0:.0f} s; "
          f"jobs={args.jobs}; load average {os.getloadavg()[0]:.1f}")
    src = work / "home" / "objects"
    os.sync()  # nothing of the build left to write back during the rounds
    ratios, ratios_alone, g_rates, r_rates = [], [], [], []
    for rnd in range(args.rounds):
        order = ["granary", "rclone"] if rnd % 2 == 0 else ["rclone", "granary"]
        took: dict[str, float] = {}
        for tool in order:
            dest = work / f"dest-{tool}"
            drop(dest)
            if tool == "granary":
                took[tool], _ = granary_push(store, dest, args.jobs)
            else:
                took["rclone alone"], took[tool] = rclone_sync(src, dest, args.jobs)
            os.sync()
        g_rates.append(size / took["granary"])
        r_rates.append(size / took["rclone"])
        ratios.append(took["rclone"] / took["granary"])
        ratios_alone.append(took["rclone alone"] / took["granary"])
        print(f"round {rnd + 1}: granary {took['granary']:.2f} s ({size / took['granary'] / 1e6:.0f} MB/s), rclone "
              f"+ sync {took['rclone']:.2f} s ({size / took['rclone'] / 1e6:.0f} MB/s) -> {ratios[-1]:.2f}x; "
              f"rclone alone (not durable) {took['rclone alone']:.2f} s -> {ratios_alone[-1]:.2f}x")
    drop(work / "dest-incr")
    first, _ = granary_push(store, work / "dest-incr", args.jobs)
    _version, changed_bytes = change_one_percent(store, args.objects)
    second, report = granary_push(store, work / "dest-incr", args.jobs)
    sent = report.transfer.bytes  # type: ignore[attr-defined]
    print()
    print(f"first push throughput vs rclone sync + sync: median {statistics.median(ratios):.2f}x "
          f"(granary {statistics.median(g_rates) / 1e6:.0f} MB/s, rclone {statistics.median(r_rates) / 1e6:.0f} MB/s)"
          "  target >= 1.0x")
    print(f"first push vs rclone sync alone (its copy not yet on disk): median {statistics.median(ratios_alone):.2f}x")
    print(f"incremental push after 1% changed: sent {sent / 1e6:.2f} MB for {changed_bytes / 1e6:.2f} MB of changed "
          f"shards = {sent / max(changed_bytes, 1):.3f}x  target <= 1.1x")
    print(f"incremental push {second:.2f} s vs first push {first:.2f} s = {first / second:.1f}x faster  target >= 10x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.work is None:
        drop(work)


if __name__ == "__main__":
    main()
