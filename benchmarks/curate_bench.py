"""Curation benchmark: Granary against datatrove in one run, on a labelled synthetic corpus and a real one.

    .venv/bin/python benchmarks/curate_bench.py [--docs 100000] [--dt-docs 15000] [--workers 2]

Installs datatrove[processing] and spaCy (its English word tokenizer needs it) into benchmarks/.venv-datatrove
on first use (see _envs.py); a failing child's error is printed. Prints throughput per core,
ratios, near-duplicate precision/recall, PII precision/recall per type and peak RSS; writes the same as
JSON to benchmarks/out/curate_bench.json. Datatrove runs on the first --dt-docs documents (a subsample, to
keep the run short); Granary runs on the full corpus and on the same subsample, for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from _envs import datatrove_python, run_child  # benchmarks/ is on sys.path when a benchmark runs as a script

from granary.config import Settings
from granary.curate.synth import PII_KINDS, Truth, generate
from granary.store import open_store

ROOT = Path(__file__).resolve().parent
REAL = ROOT.parent.parent / "shared" / "corpora" / "powershell-docs.jsonl.zst"
STEPS = ["normalize_unicode", "normalize_whitespace", "gopher_repetition", "gopher_quality",
         {"step": "c4_quality", "filter_no_terminal_punct": False}, "fineweb_quality", "exact_dedup",
         "minhash_dedup", "pii"]


def ensure_datatrove() -> Path:
    return datatrove_python()  # creates or completes benchmarks/.venv-datatrove (with spaCy), see _envs.py


def mb(docs: list[dict[str, str]]) -> float:
    return sum(len(d["text"].encode()) for d in docs) / 1e6


def near_pr(removed_near: set[str], removed_exact: set[str], docs: list[dict[str, str]], truth: Truth,
            n: int) -> tuple[float, float]:
    """Group-aware precision of near-dup removals and recall of planted near duplicates.

    A planted group is an original plus its copies; deduplication should remove all but one member, whichever
    it keeps (Granary keeps the first, datatrove may keep another). Precision: removals that fall in a planted
    group, at most |group| - 1 per group, over all near-dup removals. Recall: near-dup copies resolved (the
    group's removals, capped at |group| - 1, counted against its near copies first) over planted near copies.
    """
    groups: dict[int, list[int]] = {}
    for i, o in truth.original.items():
        if i < n and o < n:
            groups.setdefault(o, [o]).append(i)
    removed = removed_near | removed_exact
    good_near = resolved = planted = 0
    for members in groups.values():
        ids = {docs[m]["id"] for m in members}
        near_copies = sum(1 for m in members[1:] if truth.kind[m] == "near_dup")
        cap = len(members) - 1
        good_near += min(len(ids & removed_near), cap)
        exact_copies = cap - near_copies
        resolved += max(0, min(len(ids & removed), cap) - exact_copies) if near_copies else 0
        planted += near_copies
    return good_near / max(len(removed_near), 1), resolved / max(planted, 1)


GRANARY_CHILD = """
import json, sys, time
from granary.config import Settings
from granary.curate import PipelineSpec, ReaderConfig, run_pipeline
from granary.curate.writers import StoreSink
settings = Settings.from_env(home=sys.argv[1], shard_size_bytes=2 * 1024 * 1024, row_group_bytes=512 * 1024)
spec = PipelineSpec.from_dict(json.loads(sys.argv[2]))
t0 = time.perf_counter()
res = run_pipeline(spec, sink=StoreSink(settings, "out"), reader=ReaderConfig(type="version", ref="bench@main"),
                   settings=settings, executor="local", num_workers=int(sys.argv[3]))
print(json.dumps({"wall_s": time.perf_counter() - t0, "steps": {k: v.to_dict() for k, v in res.steps.items()},
                  "rows_out": res.rows_out}))
"""


def granary_pipeline(docs: list[dict[str, str]], workers: int, tmp: Path, name: str) -> dict:
    """The full pipeline in a fresh child process (imports and worker start-up included, as for datatrove)."""
    home = tmp / f"g-{name}"
    settings = Settings.from_env(home=home, shard_size_bytes=2 * 1024 * 1024, row_group_bytes=512 * 1024)
    store = open_store(settings)
    store.create_dataset("bench")
    store.commit_table("bench", pa.Table.from_pylist(docs))
    spec = {"name": "bench", "steps": STEPS}
    t0 = time.perf_counter()
    proc = run_child([sys.executable, "-c", GRANARY_CHILD, str(home), json.dumps(spec), str(workers)],
                     "the Granary pipeline")
    wall = time.perf_counter() - t0
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    rej = store.read_side_table("out@main", "rejected")
    reasons = rej.column("reason").to_pylist()
    ids = rej.column("id").to_pylist()
    return {"wall_s": wall, "steps": res["steps"],
            "near": {i for i, r in zip(ids, reasons, strict=True) if r.startswith("near_duplicate_of")},
            "exact": {i for i, r in zip(ids, reasons, strict=True) if r.startswith("exact_duplicate_of")},
            "rows_out": res["rows_out"]}


def signature_speed(docs: list[dict[str, str]]) -> dict[str, float]:
    from granary.curate.dedup.minhash import band_hashes, signatures

    out = {}
    for scheme, n in (("oph", len(docs)), ("permutation", len(docs) // 20)):
        sub = docs[:n]
        arrays = [pa.array([d["text"] for d in sub[i : i + 8192]]) for i in range(0, n, 8192)]
        signatures(arrays[0], scheme=scheme)  # warm-up: hash powers, allocator
        t0 = time.perf_counter()
        for arr in arrays:  # the batches the pipeline hands to minhash_dedup's collect
            band_hashes(signatures(arr, scheme=scheme), 32, 4)
        out[scheme] = mb(sub) / (time.perf_counter() - t0)
    return out


def pii_accuracy(docs: list[dict[str, str]], truth: Truth) -> dict[str, dict[str, float]]:
    from granary.curate.pii.scanner import PiiScanner

    scanner = PiiScanner()
    t0 = time.perf_counter()
    found = {}
    for i in range(0, len(docs), 8192):
        for j, fs in scanner.scan_batch(pa.array([d["text"] for d in docs[i : i + 8192]])).items():
            found[i + j] = fs
    seconds = time.perf_counter() - t0
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for i in set(found) | set(truth.pii):
        planted = set(truth.pii.get(i, []))
        got = {(f.kind, f.value) for f in found.get(i, [])}
        tp.update(k for k, _ in planted & got)
        fp.update(k for k, _ in got - planted)
        fn.update(k for k, _ in planted - got)
    out = {k: {"planted": tp[k] + fn[k], "precision": tp[k] / max(tp[k] + fp[k], 1),
               "recall": tp[k] / max(tp[k] + fn[k], 1)} for k in PII_KINDS}
    out["_throughput_mb_s"] = {"value": mb(docs) / seconds}  # type: ignore[dict-item]
    return out


def run_datatrove(docs: list[dict[str, str]], workers: int, tmp: Path) -> dict:
    py = ensure_datatrove()
    inp = tmp / "dt-in"
    inp.mkdir()
    files = max(workers * 2, 4)
    for f in range(files):
        with open(inp / f"part{f}.jsonl", "w") as fh:
            for d in docs[f::files]:
                fh.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    t0 = time.perf_counter()
    proc = run_child([py, ROOT / "curate_datatrove_runner.py", inp, tmp / "dt-work", workers],
                     "the datatrove pipeline")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


REAL_CHILD = """
import json, resource, sys, time
from granary.curate import PipelineSpec, ParquetDirSink, ReaderConfig, run_pipeline
spec = PipelineSpec.from_dict({"name": "real-near", "steps": ["normalize_unicode", "exact_dedup",
                               {"step": "minhash_dedup", "verify_threshold": 0.7}]})
t0 = time.perf_counter()
res = run_pipeline(spec, sink=ParquetDirSink(sys.argv[2]), reader=ReaderConfig(type="files", paths=(sys.argv[1],)),
                   executor="inline", work_root=__import__("pathlib").Path(sys.argv[3]))
print(json.dumps({"wall_s": time.perf_counter() - t0, "rows_in": res.rows_in, "rows_out": res.rows_out,
                  "near": res.globals["minhash_dedup"], "exact": res.globals["exact_dedup"],
                  "bytes_in": res.steps["normalize_unicode"].bytes_in,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_real(tmp: Path) -> dict:
    proc = run_child([sys.executable, "-c", REAL_CHILD, REAL, tmp / "real-out", tmp / "rw"],
                     "the Granary pipeline on the real corpus")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--dt-docs", type=int, default=15_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    res: dict = {"workers": args.workers, "docs": args.docs, "dt_docs": args.dt_docs}
    try:
        t0 = time.perf_counter()
        docs, truth = generate(args.docs, seed=2024)
        res["corpus_mb"] = mb(docs)
        print(f"corpus: {len(docs):,} docs, {res['corpus_mb']:.1f} MB (generated in {time.perf_counter() - t0:.0f}s)")
        res["signature_mb_s_per_core"] = signature_speed(docs)
        print(f"MinHash signatures per core: {res['signature_mb_s_per_core']}")
        full = granary_pipeline(docs, args.workers, tmp, "full")
        per_core = res["corpus_mb"] / full["wall_s"] / args.workers
        res["granary_full"] = {"wall_s": full["wall_s"], "mb_s_per_core": per_core,
                               "near_pr": near_pr(full["near"], full["exact"], docs, truth, len(docs)),
                               "steps": full["steps"]}
        print(f"granary full corpus: {full['wall_s']:.1f}s, {res['granary_full']['mb_s_per_core']:.2f} MB/s/core, "
              f"near-dup P/R {res['granary_full']['near_pr']}")
        sub = docs[: args.dt_docs]
        sub_mb = mb(sub)
        g_sub = granary_pipeline(sub, args.workers, tmp, "sub")
        res["granary_sub"] = {"wall_s": g_sub["wall_s"], "mb_s_per_core": sub_mb / g_sub["wall_s"] / args.workers,
                              "near_pr": near_pr(g_sub["near"], g_sub["exact"], docs, truth, len(sub))}
        res["pii"] = pii_accuracy(docs, truth)
        print("PII:", {k: (round(v["precision"], 4), round(v["recall"], 4)) for k, v in res["pii"].items()
                       if not k.startswith("_")}, f"{res['pii']['_throughput_mb_s']['value']:.1f} MB/s")
        if not args.skip_datatrove:
            dt = run_datatrove(sub, args.workers, tmp)
            total = sum(dt["stages"].values())
            sig_mb = dt["minhash_input_bytes"] / 1e6
            res["datatrove"] = {"wall_s": dt["wall_s"], "stages_s": dt["stages"],
                                "mb_s_per_core": sub_mb / total / args.workers,
                                "signature_mb_s_per_core": sig_mb / dt["stages"]["minhash_signature"] / args.workers,
                                "near_pr": near_pr(set(dt["near_removed"]), set(dt["exact_removed"]), docs, truth,
                                                   len(sub))}
            res["ratio_full_pipeline_per_core"] = (res["granary_sub"]["mb_s_per_core"]
                                                   / res["datatrove"]["mb_s_per_core"])
            res["ratio_signature_per_core"] = res["signature_mb_s_per_core"]["oph"] / res["datatrove"][
                "signature_mb_s_per_core"]
        if not args.skip_real and REAL.exists():
            res["real"] = run_real(tmp)
        res["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "curate_bench.json").write_text(json.dumps(res, indent=1, default=str))
    _print_summary(res)


def _print_summary(res: dict) -> None:
    print("\n=== curation benchmark (same run) ===")
    print(f"workers: {res['workers']}; synthetic corpus {res['docs']:,} docs / {res['corpus_mb']:.1f} MB; "
          f"datatrove subsample {res['dt_docs']:,} docs")
    g, gs = res["granary_full"], res["granary_sub"]
    print(f"full pipeline, Granary (all docs):   {g['mb_s_per_core']:.2f} MB/s/core, near P/R {g['near_pr']}")
    print(f"full pipeline, Granary (subsample):  {gs['mb_s_per_core']:.2f} MB/s/core, near P/R {gs['near_pr']}")
    if "datatrove" in res:
        d = res["datatrove"]
        print(f"full pipeline, datatrove (subsample): {d['mb_s_per_core']:.3f} MB/s/core, near P/R {d['near_pr']}")
        print(f"  ratio Granary/datatrove per core: {res['ratio_full_pipeline_per_core']:.1f}x on the same subsample, "
              f"{g['mb_s_per_core'] / d['mb_s_per_core']:.0f}x Granary's full corpus vs datatrove's subsample")
        print(f"MinHash signatures per core: Granary oph {res['signature_mb_s_per_core']['oph']:.1f} MB/s, "
              f"permutation {res['signature_mb_s_per_core']['permutation']:.2f} MB/s, "
              f"datatrove {d['signature_mb_s_per_core']:.2f} MB/s -> {res['ratio_signature_per_core']:.0f}x")
    pii = {k: v for k, v in res["pii"].items() if not k.startswith("_")}
    print(f"PII min precision {min(v['precision'] for v in pii.values()):.4f}, "
          f"min recall {min(v['recall'] for v in pii.values()):.4f} over {len(pii)} types")
    if "real" in res:
        r = res["real"]
        print(f"real corpus near-dedup: {r['rows_in']:,} docs, {r['bytes_in'] / 1e6:.0f} MB, {r['wall_s']:.1f}s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, removed exact {r['exact']['duplicates']}, "
              f"near {r['near']['duplicates']}")


if __name__ == "__main__":
    main()
