"""Experiment: what verifying checksums costs a first shuffled pass, by checksum granularity and hashing method.

Why the loader verifies 1 MiB blocks with xxh3 in Python threads: this script replays the loader's access pattern
(a random permutation of 4 KiB samples, 64 per batch, one fancy-index gather per batch from a populated mapping,
samples 64 bytes off page boundaries like token shards) and serves each batch only once every checksum unit it
touches has been hashed. A background thread hashes the units in first-touch order:

- ``none``: no checksums (the floor);
- ``thread-1m`` / ``thread-64k``: ``xxhash.xxh3_64_intdigest`` per unit from a Python thread (each call releases
  and retakes the GIL);
- ``native-4k`` / ``native-16k``: one ctypes call hashes 512 units with xxhash's own ``XXH3_64bits`` in a C loop
  (compiled here with the system C compiler), so the thread holds the GIL once per 512 units.

The cost of each variant is ``1 - none / variant`` per round (rounds interleave the variants; the median is
printed). Needs the flat file ``benchmarks/stream_bench.py`` writes (``benchmarks/out/anchors/flat.u16``).

Run:  .venv/bin/python benchmarks/verify_granularity.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash
import xxhash._xxhash

from granary.stream.verify import populate

FLAT = Path(__file__).resolve().parent / "out" / "anchors" / "flat.u16"
SEQ, BATCH, OFFSET = 2048, 64, 64
C_SOURCE = """
#include <stdint.h>
#include <stddef.h>
typedef uint64_t (*hash_fn)(const void *, size_t);
void hash_units(hash_fn fn, const uint8_t *base, const int64_t *offsets, int64_t unit, int64_t n, uint64_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = fn(base + offsets[i], (size_t)unit);
}
"""


def native_hasher(workdir: Path) -> Callable[[int, np.ndarray, int, np.ndarray], None]:
    """hash(base address, unit offsets, unit bytes, out) through a C loop calling xxhash's XXH3_64bits."""
    src, lib_path = workdir / "units.c", workdir / "libunits.so"
    src.write_text(C_SOURCE)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.hash_units.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_void_p]
    lib.hash_units.restype = None
    fn = ctypes.cast(ctypes.CDLL(xxhash._xxhash.__file__).XXH3_64bits, ctypes.c_void_p).value

    def run(base: int, offsets: np.ndarray, unit: int, out: np.ndarray) -> None:
        lib.hash_units(fn, base, offsets.ctypes.data, unit, len(offsets), out.ctypes.data)

    return run


def one_pass(raw: np.ndarray, perm: np.ndarray, unit: int, method: str,
             native: Callable[[int, np.ndarray, int, np.ndarray], None] | None) -> float:
    """Seconds for one pass that waits, before each batch, for the checksum units the batch touches."""
    n = len(perm)
    rows = np.lib.stride_tricks.as_strided(raw[OFFSET:].view(np.uint16), shape=(n, SEQ), strides=(SEQ * 2, 2),
                                           writeable=False)
    done = [0]
    need = np.zeros(n // BATCH, dtype=np.int64)
    if method != "none":
        starts = OFFSET + perm.astype(np.int64) * SEQ * 2
        touched = np.column_stack([starts // unit, (starts + SEQ * 2 - 1) // unit]).ravel()
        units, first = np.unique(touched, return_index=True)
        order = units[np.argsort(first)]  # units by first touch
        place = np.empty(len(raw) // unit + 1, dtype=np.int64)
        place[order] = np.arange(len(order))
        per_batch = np.maximum.reduceat(place[touched], np.arange(0, len(touched), 2 * BATCH)) + 1
        need = np.maximum.accumulate(per_batch)
        offsets = order * unit
        base = raw.ctypes.data
        view = memoryview(raw)

        def verifier() -> None:
            if method == "native":
                assert native is not None
                out = np.empty(512, dtype=np.uint64)
                for lo in range(0, len(offsets), 512):
                    chunk = offsets[lo : lo + 512]
                    native(base, chunk, unit, out[: len(chunk)])
                    done[0] = lo + len(chunk)
            else:
                for i, off in enumerate(offsets.tolist()):
                    xxhash.xxh3_64_intdigest(view[off : off + unit])
                    done[0] = i + 1

    t0 = time.perf_counter()
    if method != "none":
        threading.Thread(target=verifier, daemon=True).start()
    for k in range(n // BATCH):
        while done[0] < need[k]:
            time.sleep(0.0001)
        _ = rows[perm[k * BATCH : (k + 1) * BATCH]]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flat", type=Path, default=FLAT)
    args = parser.parse_args()
    raw = np.memmap(args.flat, dtype=np.uint8, mode="r").view(np.ndarray)
    populate(raw)
    perm = np.random.default_rng(0).permutation((len(raw) - OFFSET) // (SEQ * 2))
    variants = {"none": (4096, "none"), "thread-1m": (1 << 20, "thread"), "thread-64k": (1 << 16, "thread"),
                "native-4k": (4096, "native"), "native-16k": (16384, "native")}
    with tempfile.TemporaryDirectory() as tmp:
        native = native_hasher(Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (unit, method) in variants.items():
                times[name].append(one_pass(raw, perm, unit, method, native))
    none = np.array(times["none"])
    for name, ts in times.items():
        t = np.array(ts)
        cost = np.median(1 - none / t)
        print(f"{name:12s} median {np.median(t):.3f} s per pass  cost {cost:6.1%}  rounds {np.round(t, 3).tolist()}")


if __name__ == "__main__":
    main()
