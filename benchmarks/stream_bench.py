"""Stream benchmark: Granary's loader against a plain numpy memmap gather, LitData, MosaicML Streaming, WebDataset.

Dataset: 262,144 samples x 2,048 uint16 tokens (1 GiB) in the page cache, shuffled, batch 64, one process.
All loaders run in the same invocation, so the printed ratios compare figures taken under the same load.

The anchors run in their own virtualenv, benchmarks/.venv-stream-anchors, which the first run creates (torch
pinned to the CPU wheel first, then litdata, mosaicml-streaming and webdataset, torchvision removed: see
benchmarks/_envs.py); a later run reuses it.

Run:  .venv/bin/python benchmarks/stream_bench.py [--rounds 2] [--no-anchors] [--keep] [--threads 1,2]
      [--samples N --out DIR]   (a smaller version for smoke runs; benchmarks/gpu/stream.sh sweeps threads)
Granary's environment needs the torch extra (the parallel index_select anchor and the torch gather kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _envs import stream_anchors_python  # benchmarks/ is on sys.path when a benchmark runs as a script

from granary.config import Settings
from granary.store import open_store
from granary.stream import StreamingDataset, bench

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
ANCHOR_PY = ROOT / ".venv-stream-anchors" / "bin" / "python"
SAMPLES, SEQ, BATCH = 262_144, 2048, 64

FIRST_BATCH = """
import time, sys
t0 = time.perf_counter()
import granary.stream
t1 = time.perf_counter()
from granary.config import Settings
from granary.store import open_store
store = open_store(Settings.from_env(home=sys.argv[1]))
t2 = time.perf_counter()
ds = granary.stream.StreamingDataset("bench", batch_size=64, seq_len=2048, store=store, output="numpy")
next(iter(ds))
t3 = time.perf_counter()
print(t1 - t0, t2 - t0, t3 - t0, t3 - t2)
"""


def _configure(samples: int, out: Path) -> None:
    """Use ``samples`` samples and keep data and results under ``out`` (default: benchmarks/out)."""
    global SAMPLES, OUT
    SAMPLES, OUT = samples, out
    if samples != 262_144:
        OUT = out / f"s{samples}"  # a smaller version never reuses the full-size data


def build(home: Path) -> None:
    store = open_store(Settings.from_env(home=home))
    if not any(d.name == "bench" for d in store.datasets()):
        t0 = time.perf_counter()
        bench.build_synthetic(store, "bench", samples=SAMPLES, seq_len=SEQ)
        print(f"built {SAMPLES * SEQ * 2 / 2**30:.2f} GiB tokens version in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
    flat = OUT / "anchors" / "flat.u16"
    if not flat.exists():
        flat.parent.mkdir(parents=True, exist_ok=True)
        ds = StreamingDataset("bench", batch_size=4096, seq_len=SEQ, store=store, shuffle=False, output="numpy",
                              token_dtype="native", num_threads=0)
        with open(flat, "wb") as f:
            for batch in ds:
                f.write(batch["tokens"].tobytes())
    refresh_huge_pages([flat])
    refresh_huge_pages(sorted((home / "objects").rglob("*.tok")))


def refresh_huge_pages(paths: list[Path]) -> None:
    """Give every input the page-cache layout a freshly written file gets (2 MiB folios, mapped with huge
    pages), so the loader and the anchor gather with the same TLB reach. Over time the kernel here splits or
    evicts folios (files read back from disk come in small ones), by different amounts for different files: each
    file that maps less than 90% with huge pages is rewritten, same bytes, in aligned 4 MiB writes (the store's
    checksums of the shards are unchanged)."""
    for path in paths:
        size_mib = path.stat().st_size / 2**20
        if bench.huge_page_mib([path]) >= 0.9 * size_mib:
            continue
        tmp = path.with_name(path.name + ".rewrite")
        with open(path, "rb") as src, open(tmp, "wb", buffering=0) as dst:
            while chunk := src.read(4 << 20):
                dst.write(chunk)
        os.chmod(tmp, path.stat().st_mode)
        os.replace(tmp, path)
    print(f"huge-page MiB after refresh: {bench.huge_page_mib(paths):.0f} of "
          f"{sum(p.stat().st_size for p in paths) / 2**20:.0f}", file=sys.stderr)


def first_batch(home: Path) -> dict[str, float]:
    """Fresh interpreter: import, open the store, build the dataset, get the first batch (median of 3)."""
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", FIRST_BATCH, str(home)], capture_output=True, text=True, check=True)
        runs.append([float(x) for x in out.stdout.split()])
    med = np.median(np.array(runs), axis=0)
    return {"import_granary_stream_s": med[0], "import_and_open_store_s": med[1],
            "import_to_first_batch_s": med[2], "open_store_to_first_batch_s": med[3]}


def anchors(names: list[str]) -> list[dict[str, Any]]:
    stream_anchors_python()  # creates or completes benchmarks/.venv-stream-anchors (see benchmarks/_envs.py)
    out = subprocess.run([str(ANCHOR_PY), str(ROOT / "stream_anchors.py"), str(OUT / "anchors"), ",".join(names)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _loader(store: Any, **kw: Any) -> dict[str, Any]:
    return bench.measure_loader(store, "bench", seq_len=SEQ, batch_size=BATCH, **kw)


def paired_rounds(store: Any, flat: Path, rounds: int, threads: list[int]) -> dict[str, Any]:
    """Each round measures the numpy anchor, the parallel index_select anchor and Granary's variants back to
    back; ratios are taken per round (the machine is shared, so only figures taken seconds apart are compared)
    and summarised by the median. Granary's figures are first passes of a fresh loader (checksums included)."""
    names = ["numpy", "numpy_populated", "parallel_anchor", "granary", "granary_noverify", "granary_numpy_gather",
             "granary_pass2", "numpy_pass2"] + [f"granary_t{n}" for n in threads]
    names += [f"granary_t{n}_pass2" for n in threads]
    runs: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in ["vs_numpy", "vs_numpy_populated", "checksum_cost",
                                                       "pass2_vs_numpy_pass2", "numpy_gather_vs_numpy",
                                                       "best_vs_parallel_anchor", "cpu_vs_numpy", "cpu_checksum_cost"]
                                      + [f"t{n}_vs_numpy" for n in threads]
                                      + [f"t{n}_pass2_vs_numpy_pass2" for n in threads]}
    shards = 0.0
    size = dict(num_samples=SAMPLES, seq_len=SEQ, batch_size=BATCH)
    for _ in range(rounds):
        numpy_run = bench.measure_memmap_gather(flat, passes=2, **size)
        numpy_pop = bench.measure_memmap_gather(flat, populate=True, **size)
        runs["numpy_populated"].append(numpy_pop["samples_per_s"])
        g = _loader(store, verify=True, passes=2)
        par = bench.measure_parallel_gather(flat, **size)
        g_nov = _loader(store, verify=False)
        g_np = _loader(store, gather="numpy")
        threaded = {n: _loader(store, num_threads=n, passes=2) for n in threads}
        shards = g["shards_per_batch"]
        for name, run in (("numpy", numpy_run), ("parallel_anchor", par), ("granary", g),
                          ("granary_noverify", g_nov), ("granary_numpy_gather", g_np)):
            runs[name].append(run["samples_per_s"])
        for n, run in threaded.items():
            runs[f"granary_t{n}"].append(run["samples_per_s"])
            ratios[f"t{n}_vs_numpy"].append(run["samples_per_s"] / numpy_run["samples_per_s"])
            runs[f"granary_t{n}_pass2"].append(run["later_passes_samples_per_s"][0])
            ratios[f"t{n}_pass2_vs_numpy_pass2"].append(run["later_passes_samples_per_s"][0]
                                                       / numpy_run["later_passes_samples_per_s"][0])
        runs["granary_pass2"].append(g["later_passes_samples_per_s"][0])
        runs["numpy_pass2"].append(numpy_run["later_passes_samples_per_s"][0])
        ratios["pass2_vs_numpy_pass2"].append(runs["granary_pass2"][-1] / runs["numpy_pass2"][-1])
        ratios["vs_numpy"].append(g["samples_per_s"] / numpy_run["samples_per_s"])
        ratios["vs_numpy_populated"].append(g["samples_per_s"] / numpy_pop["samples_per_s"])
        ratios["numpy_gather_vs_numpy"].append(g_np["samples_per_s"] / numpy_run["samples_per_s"])
        ratios["checksum_cost"].append(1 - g["samples_per_s"] / g_nov["samples_per_s"])
        # samples per CPU second of the whole process: what each costs in work, whatever the machine's load
        ratios["cpu_vs_numpy"].append(g["samples_per_cpu_s"] / numpy_run["samples_per_cpu_s"])
        ratios["cpu_checksum_cost"].append(1 - g["samples_per_cpu_s"] / g_nov["samples_per_cpu_s"])
        best = max([g["samples_per_s"]] + [r["samples_per_s"] for r in threaded.values()])
        ratios["best_vs_parallel_anchor"].append(best / par["samples_per_s"])
    return {"samples_per_s": {k: [round(x) for x in v] for k, v in runs.items()},
            "median_samples_per_s": {k: float(np.median(v)) for k, v in runs.items()},
            "median_gb_per_s": {k: float(np.median(v)) * SEQ * 2 / 1e9 for k, v in runs.items()},
            "ratios_per_round": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
            "median_ratios": {k: float(np.median(v)) for k, v in ratios.items()},
            "granary_shards_per_batch": shards}


def anchor_rounds(store: Any, names: list[str]) -> dict[str, Any]:
    """Each anchor runs in its own process between two Granary measurements; the ratio uses their mean."""
    out: dict[str, Any] = {}
    for name in names:
        before = _loader(store)["samples_per_s"]
        found = anchors([name])
        after = _loader(store)["samples_per_s"]
        for a in found:
            granary = (before + after) / 2
            out[a["anchor"]] = {**a, "granary_samples_per_s": granary,
                                "granary_ratio": granary / a["samples_per_s"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds of Granary and the numpy anchor")
    parser.add_argument("--no-anchors", action="store_true", help="skip LitData, Streaming and WebDataset")
    parser.add_argument("--anchors", default="litdata,mosaic,webdataset")
    parser.add_argument("--keep", action="store_true", help="keep the anchors' converted copies")
    parser.add_argument("--threads", default="1,2", help="num_threads values measured besides 0 (comma list)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples of the synthetic version (smoke runs)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the data and the JSON result")
    args = parser.parse_args()
    _configure(args.samples, args.out)
    home = OUT / "home"
    build(home)
    store = open_store(Settings.from_env(home=home))
    flat = OUT / "anchors" / "flat.u16"
    threads = [int(t) for t in args.threads.split(",") if t.strip() and int(t) > 0]
    try:
        import torch  # loaded here, so gather="auto" uses its kernel as a training process would

        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = 0
    shard_files = sorted((home / "objects").rglob("*.tok"))
    result: dict[str, Any] = {"load_average_before": os.getloadavg(), "cores": len(os.sched_getaffinity(0)),
                              # 2 MiB pages: how much of each input the kernel maps with huge pages (see bench.py)
                              "huge_page_mib": {"numpy_flat_file": bench.huge_page_mib([flat]),
                                                "granary_shards": bench.huge_page_mib(shard_files)},
                              "torch_intra_op_threads": torch_threads, "samples": SAMPLES,
                              "paired": paired_rounds(store, flat, args.rounds, threads)}
    result["load_average_after"] = os.getloadavg()
    result["hashing_gb_per_s"] = {f"{n}_threads": bench.measure_hashing(shard_files, threads=n) for n in (1, 2)}
    result["all_verified_after_s"] = bench.measure_loader(store, "bench", seq_len=SEQ, batch_size=BATCH)[
        "all_verified_after_s"]
    result["resume"] = bench.measure_resume(store, "bench", seq_len=SEQ, batch_size=BATCH, trials=7)
    result["first_batch"] = first_batch(home)
    if not args.no_anchors:
        result["anchors"] = anchor_rounds(store, args.anchors.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stream_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.keep:
        for name in ("litdata", "mosaic", "wds"):
            shutil.rmtree(OUT / "anchors" / name, ignore_errors=True)


if __name__ == "__main__":
    main()
