"""Block cache: the cached path yields the same batches, stays within budget, verifies fills, shares safely."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import time
from pathlib import Path

import numpy as np
import pytest

from granary.config import Settings
from granary.store import Store, open_store
from granary.store.formats.tokens.layout import DEFAULT_BLOCK_BYTES
from granary.stream import CorruptBlockError, StreamingDataset
from granary.stream.cache import BlockCache
from tests.unit.stream.conftest import write_tokens

BLOCK_TOKENS = DEFAULT_BLOCK_BYTES // 2


def _big_store(home: Path) -> Store:
    store = open_store(Settings.from_env(home=home))
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, BLOCK_TOKENS // 2, dtype=np.uint16) for _ in range(12)]  # 6 blocks
    write_tokens(store, "big", docs, shard_tokens=2 * BLOCK_TOKENS)  # 3 shards of 2 blocks
    return store


def _stream(store: Store, cache: BlockCache | None, **kw: object) -> np.ndarray:
    ds = StreamingDataset("big", batch_size=16, seq_len=4096, seed=5, store=store, output="numpy",
                          token_dtype="native", num_threads=0, cache=cache, **kw)  # type: ignore[arg-type]
    return np.concatenate([b["tokens"] for b in ds])


def test_cached_reads_equal_direct_reads_within_budget(tmp_path: Path) -> None:
    store = _big_store(tmp_path / "h")
    budget = 3 * DEFAULT_BLOCK_BYTES
    cache = BlockCache(store, tmp_path / "cache", budget_bytes=budget, prefetch_threads=2)
    assert np.array_equal(_stream(store, cache), _stream(store, None))
    assert cache.stats["fills"] >= 6 and cache.stats["evictions"] >= 1
    assert cache.cached_bytes() <= budget + DEFAULT_BLOCK_BYTES
    roomy = BlockCache(store, tmp_path / "cache2", budget_bytes=64 * DEFAULT_BLOCK_BYTES)
    _stream(store, roomy)
    again = BlockCache(store, tmp_path / "cache2", budget_bytes=64 * DEFAULT_BLOCK_BYTES)
    _stream(store, again)
    assert roomy.stats["fills"] >= 6 and again.stats["fills"] == 0  # the second reader only hits
    assert again.cached_bytes() == 6 * DEFAULT_BLOCK_BYTES


def test_a_corrupt_remote_block_fails_the_fill(tmp_path: Path) -> None:
    store = _big_store(tmp_path / "h")
    entry = store.manifest("big").shards[1]
    path = Path(store.local_path(entry) or "")
    data = bytearray(path.read_bytes())
    data[64 + 100] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    cache = BlockCache(store, tmp_path / "cache", budget_bytes=64 * DEFAULT_BLOCK_BYTES)
    with pytest.raises(CorruptBlockError) as info:
        _stream(store, cache, shuffle=False)
    assert info.value.key == entry.key and info.value.block == 0
    assert not (tmp_path / "cache" / entry.checksum / "0.blk").exists()  # nothing unverified is ever cached


def _reader(home: str, cache_root: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    store = open_store(Settings.from_env(home=Path(home)))
    cache = BlockCache(store, Path(cache_root), budget_bytes=2 * DEFAULT_BLOCK_BYTES, prefetch_threads=2)
    queue.put(_stream(store, cache).sum(dtype=np.int64).item())


def test_two_processes_share_one_small_cache(tmp_path: Path) -> None:
    store = _big_store(tmp_path / "h")
    want = _stream(store, None).sum(dtype=np.int64).item()
    # spawn, not fork: this process still has the loader's background threads (verify, populate), and a child
    # forked while one of them holds a lock can hang on it
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_reader, args=(str(tmp_path / "h"), str(tmp_path / "c"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + 180  # only bounds a hang; a loaded machine may take a while
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=1))
        except queue_module.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a reader process failed with exit code {dead} (its traceback is in stderr above)"
            assert time.monotonic() < deadline, "the readers did not finish within 180 s"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [want, want]
    assert not list((tmp_path / "c").rglob("*.tmp"))
