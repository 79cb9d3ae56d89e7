"""Cost of the read gate: every read authorised and audited, against reading with no security layer.

Measures, in one run on the same data:
  * a shard-level check after a version was opened (what the loader pays per shard it opens) against the bare
    object lookup it guards (`ObjectStore.local_path`);
  * a streaming epoch of a tokens version through `StreamingDataset` with the security layer (local admin,
    audited) against the same epoch with no security layer (`NullHooks`): the anchor.

Times are CPU seconds of this process (best of --repeats), as in secure_bench.py.

Run: .venv/bin/python benchmarks/gate_bench.py [--docs 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from granary.config import Settings
from granary.secure.hooks import SecureHooks
from granary.store import Store
from granary.store.hooks import NullHooks


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return max(min(times), 1e-9)


def epoch(store: Store, ref: str) -> int:
    from granary.stream import StreamingDataset

    ds = StreamingDataset(ref, batch_size=64, seq_len=256, seed=0, shuffle=True, store=store, output="numpy",
                          num_threads=0, rank=0, world_size=1)
    return sum(len(b["tokens"]) for b in ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="granary-gate-") as tmp:
        settings = Settings.from_env(environ={}, home=Path(tmp) / "home")
        hooks = SecureHooks.from_settings(settings, environ={})
        secure = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
        plain = Store(settings, hooks=NullHooks(), catalog=hooks.guard.catalog)
        secure.create_dataset("toks", kind="tokens")
        rng = np.random.default_rng(0)
        with secure.transaction("toks") as txn:
            txn.write_tokens([rng.integers(0, 50_000, 1000, dtype=np.uint32) for _ in range(args.docs)],
                             dtype="uint16")
            txn.commit(message="bench")
        entry = secure.open_version("toks").shards[0]
        n = args.calls
        gate = best_of(args.repeats, lambda: [secure.gate.shard(entry.key) for _ in range(n)]) / n
        bare = best_of(args.repeats, lambda: [secure.objects.local_path(entry.key) for _ in range(n)]) / n
        t_plain = best_of(args.repeats, lambda: epoch(plain, "toks"))
        t_secure = best_of(args.repeats, lambda: epoch(secure.bind(), "toks"))  # a fresh view: decided anew
        print(f"shard check after open: {gate * 1e6:.2f} us  (bare object lookup {bare * 1e6:.2f} us)")
        print(f"streaming epoch, {args.docs} docs: plain {t_plain * 1e3:.1f} ms, gated+audited "
              f"{t_secure * 1e3:.1f} ms, ratio plain/gated {t_plain / t_secure:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
