"""The exactly-once drill of issue 15 at full size: a producer writes N numbered messages into a Redis stream
while `granary ingest-stream` is killed with SIGKILL at K random moments and restarted; at the end the dataset
must hold every number exactly once.

    .venv/bin/python benchmarks/ingest_kill_drill.py [--messages 1000000] [--kills 20] [--seed 0]

Needs the Redis server on 127.0.0.1:6379. Prints the kills (when, and how much was committed then), the
final counts, and the wall time; exits 1 if any number is missing or duplicated. JSON to
benchmarks/out/ingest_kill_drill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from granary.config import Settings
from granary.live import read_offset
from granary.live.registry import open_source
from granary.store import open_store

URL = "redis://127.0.0.1:6379/0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--produce-s", type=float, default=90.0,
                    help="spread the production over about this long, so every kill lands while messages arrive")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    stream = f"drill-{uuid.uuid4().hex[:8]}"
    source = f"{URL}?stream={stream}"
    source_id = open_source(source).url  # the offsets are kept under the source's canonical URL
    client = redis.Redis.from_url(URL)
    home = Path(tempfile.mkdtemp(prefix="granary-drill-"))
    env = {**os.environ, "GRANARY_HOME": str(home)}
    for var in ("GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL"):
        env.pop(var, None)
    store = open_store(Settings.from_env(home=home))
    log = home / "ingester.log"
    produced = threading.Event()

    def producer() -> None:
        chunk = 5000
        pause = args.produce_s / max(1, args.messages // chunk)
        for start in range(0, args.messages, chunk):
            began = time.monotonic()
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(args.messages, start + chunk)):
                pipe.xadd(stream, {"data": b'{"n": %d}' % i})
            pipe.execute()
            time.sleep(max(0.0, pause - (time.monotonic() - began)) * rng.uniform(0.5, 1.5))
        produced.set()

    def committed() -> int:
        if not any(d.name == "drill" for d in store.datasets()):
            return 0
        off = read_offset(store.catalog, source_id, "drill", "main")
        return 0 if off is None else off.records

    def ingester(*extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "granary.cli.main", "ingest-stream", source, "-d", "drill",
                                 "--json", "--every", "500ms", "--batch-records", "50000", *extra],
                                env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))

    t0 = time.perf_counter()
    threading.Thread(target=producer, daemon=True).start()
    kills = []
    for k in range(args.kills):
        before = committed()
        if before >= args.messages:
            print(f"everything was committed after {k} kills; produce more slowly (--produce-s) for more")
            break
        proc = ingester()
        deadline = time.monotonic() + 120
        while committed() <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            print(f"the ingester exited early:\n{log.read_text()[-2000:]}")
            return 1
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment: reading, writing shards, committing, acknowledging
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"kill": k + 1, "at_s": round(time.perf_counter() - t0, 2), "committed": committed()})
        print(f"kill {k + 1:2d} at {kills[-1]['at_s']:7.2f} s: {kills[-1]['committed']:,} committed")
    produced.wait()
    remaining = args.messages - committed()
    if remaining > 0:
        proc = ingester("--max-records", str(remaining), "--idle-stop", "30s")
        proc.wait(timeout=600)
    wall = time.perf_counter() - t0
    numbers = store.read_table("drill", columns=["n"]).column("n").to_numpy()
    counts = np.bincount(numbers, minlength=args.messages)
    missing, duplicated = int((counts == 0).sum()), int((counts > 1).sum())
    out = {"messages": args.messages, "kills": len(kills), "rows": len(numbers), "missing": missing,
           "duplicated": duplicated, "wall_s": round(wall, 1), "versions": len(store.log("drill")),
           "kill_log": kills}
    print(f"{args.messages:,} messages, {len(kills)} kills: {len(numbers):,} rows, {missing} missing, "
          f"{duplicated} duplicated, {out['versions']} versions, {wall:.1f} s -> "
          f"{'EXACTLY ONCE' if missing == duplicated == 0 and len(numbers) == args.messages else 'FAILED'}")
    Path("benchmarks/out").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/out/ingest_kill_drill.json").write_text(json.dumps(out, indent=1))
    client.delete(stream)
    return 0 if missing == duplicated == 0 and len(numbers) == args.messages else 1


if __name__ == "__main__":
    raise SystemExit(main())
