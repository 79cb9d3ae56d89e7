"""Loader measurements shared by ``granary stream-bench`` and ``benchmarks/stream_bench.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from granary.store import Store
from granary.stream.dataset import StreamingDataset


def build_synthetic(store: Store, name: str, *, samples: int, seq_len: int, shards: int = 16) -> str:
    """Commit ``samples`` documents of ``seq_len`` uint16 tokens; sample ``i`` holds ``i`` in its first two
    tokens (low, high 16 bits), so any loader's output can be traced back to sample ids."""
    store.create_dataset(name, kind="tokens", description="synthetic stream benchmark data")
    rng = np.random.default_rng(0)

    def docs() -> Any:
        for lo in range(0, samples, 4096):
            block = rng.integers(0, 65535, size=(min(4096, samples - lo), seq_len), dtype=np.uint16)
            ids = np.arange(lo, lo + len(block))
            block[:, 0], block[:, 1] = ids & 0xFFFF, ids >> 16
            yield from block

    with store.transaction(name, mode="overwrite") as txn:
        txn.write_tokens(docs(), dtype="uint16", shard_tokens=samples * seq_len // shards)
        return txn.commit(message=f"synthetic {samples} x {seq_len}").id


def sample_ids(tokens: np.ndarray) -> np.ndarray:
    """Sample ids carried by synthetic samples (see :func:`build_synthetic`)."""
    t = tokens.astype(np.int64)
    return t[:, 0] | (t[:, 1] << 16)


def measure_loader(store: Store, ref: str, *, seq_len: int, batch_size: int = 64, max_batches: int | None = None,
                   verify: bool = True, num_threads: int = 0, shards: int = 16, seed: int = 0,
                   passes: int = 1, gather: str = "auto") -> dict[str, Any]:
    """Samples/s, GB/s and shards drawn per batch of the first pass (or ``max_batches``) of a fresh loader;
    with ``passes`` > 1, also the samples/s of each later pass (blocks already verified, pages mapped)."""
    ds = StreamingDataset(ref, batch_size=batch_size, seq_len=seq_len, seed=seed, store=store, output="numpy",
                          token_dtype="native", verify=verify, num_threads=num_threads, gather=gather)  # type: ignore[arg-type]
    per_shard = ds.num_samples // shards
    ids: list[np.ndarray] = []
    count = 0
    verifier = getattr(ds.sources[0], "verifier", None)
    verified_at = None
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in ds:
        ids.append(batch["tokens"][:, :2].copy())
        count += len(batch["tokens"])
        if verified_at is None and verifier is not None and verifier.all_ok:
            verified_at = time.perf_counter() - t0
        if max_batches is not None and len(ids) >= max_batches:
            break
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0  # all threads of the process: gather, hashing, decryption
    later = []
    for _ in range(passes - 1):
        n, t1 = 0, time.perf_counter()
        for batch in ds:
            n += len(batch["tokens"])
        later.append(n / (time.perf_counter() - t1))
    drawn = [len(np.unique(sample_ids(b) // per_shard)) for b in ids]
    return {"samples": count, "seconds": seconds, "samples_per_s": count / seconds,
            "samples_per_cpu_s": count / max(cpu, 1e-9),
            "gb_per_s": count * seq_len * 2 / seconds / 1e9,  # build_synthetic writes uint16
            "shards_per_batch": float(np.mean(drawn)), "later_passes_samples_per_s": later,
            "all_verified_after_s": verified_at}  # first batch served after every block was checked


def measure_memmap_gather(path: Path, *, num_samples: int, seq_len: int, batch_size: int = 64,
                          max_batches: int | None = None, seed: int = 0, passes: int = 1,
                          populate: bool = False) -> dict[str, Any]:
    """The plain anchor: one flat uint16 memmap, a random permutation, one sorted gather per batch (a fresh
    mapping, like a fresh loader); with ``passes`` > 1 the same mapping is read again with a new permutation.
    ``populate`` first maps it as the loader maps its shards (huge pages advised, page tables populated)."""
    mm = np.memmap(path, dtype=np.uint16, mode="r", shape=(num_samples, seq_len))
    if populate:
        from granary.stream.verify import populate as populate_pages

        populate_pages(mm)
    stop = num_samples if max_batches is None else min(num_samples, max_batches * batch_size)
    rates = []
    for p in range(passes):
        perm = np.random.default_rng([seed, p]).permutation(num_samples)
        c0, t0 = time.process_time(), time.perf_counter()
        for lo in range(0, stop, batch_size):
            _ = mm[np.sort(perm[lo : lo + batch_size])]
        rates.append((stop, time.perf_counter() - t0, time.process_time() - c0))
    del mm
    stop, seconds, cpu = rates[0]
    return {"samples": stop, "seconds": seconds, "samples_per_s": stop / seconds,
            "samples_per_cpu_s": stop / max(cpu, 1e-9),
            "gb_per_s": stop * seq_len * 2 / seconds / 1e9,
            "later_passes_samples_per_s": [n / s for n, s, _ in rates[1:]]}


def measure_parallel_gather(path: Path, *, num_samples: int, seq_len: int, batch_size: int = 64,
                            group: int = 16, threads: int | None = None, max_batches: int | None = None,
                            seed: int = 0) -> dict[str, Any]:
    """The parallel anchor written for the benchmark: ``torch.index_select`` over ``group`` batches at once
    from one flat memmap, into one reused buffer, on ``threads`` intra-op threads (default: all cores)."""
    import os

    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        mm = np.memmap(path, dtype=np.int16, mode="r", shape=(num_samples, seq_len))  # uint16 bytes as int16
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mapping: nothing writes through it
            src = torch.from_numpy(mm)
        stop = num_samples if max_batches is None else min(num_samples, max_batches * batch_size)
        perm = np.random.default_rng([seed, 0]).permutation(num_samples)
        rows = group * batch_size
        out = torch.empty((rows, seq_len), dtype=torch.int16)
        t0 = time.perf_counter()
        for lo in range(0, stop, rows):
            idx = torch.from_numpy(np.sort(perm[lo : min(stop, lo + rows)].reshape(-1, batch_size), axis=1).ravel())
            torch.index_select(src, 0, idx, out=out[: len(idx)])
        seconds = time.perf_counter() - t0
        del src, mm
    finally:
        torch.set_num_threads(saved)
    return {"samples": stop, "seconds": seconds, "samples_per_s": stop / seconds,
            "gb_per_s": stop * seq_len * 2 / seconds / 1e9, "threads": threads, "group": group}


def measure_resume(store: Store, ref: str, *, seq_len: int, batch_size: int = 64, trials: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """Seconds from ``load_state_dict`` at random positions to the first batch (store already open)."""
    ds = StreamingDataset(ref, batch_size=batch_size, seq_len=seq_len, seed=seed, store=store, output="numpy",
                          token_dtype="native", num_threads=0)
    state = ds.state_dict()
    rng = np.random.default_rng(seed)
    times, opens = [], []
    for _ in range(trials):
        state["position"] = int(rng.integers(0, ds.num_samples * 3))
        t0 = time.perf_counter()
        fresh = StreamingDataset(ref, batch_size=batch_size, seq_len=seq_len, seed=seed, store=store,
                                 output="numpy", token_dtype="native", num_threads=0)
        t1 = time.perf_counter()
        fresh.load_state_dict(state)
        next(iter(fresh))
        times.append(time.perf_counter() - t1)
        opens.append(t1 - t0)
    return {"resume_to_first_batch_s_max": max(times), "resume_to_first_batch_s_mean": float(np.mean(times)),
            "open_dataset_s_mean": float(np.mean(opens))}


def huge_page_mib(paths: list[Path]) -> float:
    """MiB of the given files that a fresh mapping maps with 2 MiB pages (``FilePmdMapped``; Linux only, else 0).

    Whether the page cache holds a file in 2 MiB folios decides how fast random rows gather from it (TLB misses),
    and it depends on how the file was written or last read from disk: the benchmark reports it for every input."""
    import mmap

    maps = []
    try:
        for p in paths:
            view = np.memmap(p, dtype=np.uint8, mode="r")
            int(view[:: mmap.PAGESIZE].sum())  # touch every page
            maps.append(view)
        total, wanted = 0, {str(Path(p).resolve()) for p in paths}
        current = False
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                    current = line.rstrip("\n").split()[-1] in wanted
                elif current and line.startswith("FilePmdMapped:"):
                    total += int(line.split()[1])
        return total / 1024
    except OSError:
        return 0.0
    finally:
        del maps  # unmapped with the last reference


def measure_hashing(paths: list[Path], *, threads: int = 1) -> float:
    """GB/s of xxh3-64 over every 1 MiB of the given (page-cached) files on ``threads`` threads: the work a first
    pass with checksums adds, as the anchor's figure for the verification phase."""
    import threading

    import xxhash

    arrays = [np.memmap(p, dtype=np.uint8, mode="r") for p in paths]
    chunks = [a[i : i + (1 << 20)] for a in arrays for i in range(0, len(a), 1 << 20)]

    def work(part: list[np.ndarray]) -> None:
        for c in part:
            xxhash.xxh3_64_intdigest(c.data)

    work(chunks)  # map the pages first: the figure is hashing, not page faults
    workers = [threading.Thread(target=work, args=(chunks[k::threads],)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    return sum(c.nbytes for c in chunks) / seconds / 1e9
