"""BlockVerifier: every block hashed once, by whichever thread claims it first; a bad block is never passed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import xxhash

from granary.stream import CorruptBlockError
from granary.stream.verify import BlockVerifier

BLOCK = 256  # tokens per block


def _shards(count: int, blocks: int, *, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, 65535, size=blocks * BLOCK, dtype=np.uint16) for _ in range(count)]
    expected = [np.array([xxhash.xxh3_64_intdigest(t[b * BLOCK : (b + 1) * BLOCK].data) for b in range(blocks)],
                         dtype=np.uint64) for t in tokens]
    return tokens, expected


def _verifier(tokens: list[np.ndarray], expected: list[np.ndarray], threads: int) -> BlockVerifier:
    v = BlockVerifier([f"shard-{i}" for i in range(len(tokens))], tokens, [BLOCK] * len(tokens), expected)
    v.threads = threads
    return v


@pytest.mark.parametrize("threads", [1, 3])
def test_each_block_is_hashed_exactly_once_across_threads(threads: int) -> None:
    tokens, expected = _shards(3, 40)
    v = _verifier(tokens, expected, threads)
    hashed: list[int] = []
    lock = threading.Lock()
    real = v._hash

    def counting(g: int) -> CorruptBlockError | None:
        with lock:
            hashed.append(g)
        return real(g)

    v._hash = counting  # type: ignore[method-assign]
    order = np.random.default_rng(1).permutation(len(v.state))
    v.announce(order)
    readers = [threading.Thread(target=v.ensure, args=(order[i::2],)) for i in range(2)]
    for th in readers:
        th.start()
    for th in readers:
        th.join()
    assert v.all_ok
    assert sorted(hashed) == list(range(len(v.state)))  # every block once, none twice


@pytest.mark.parametrize("threads", [1, 3])
def test_a_bad_block_raises_for_every_caller_and_the_good_ones_pass(threads: int) -> None:
    tokens, expected = _shards(2, 30)
    tokens[1] = tokens[1].copy()
    tokens[1][7 * BLOCK + 3] ^= 1  # one bit in block 7 of shard 1
    v = _verifier(tokens, expected, threads)
    v.announce(np.arange(len(v.state)))
    bad = int(v.base[1]) + 7
    for _ in range(2):  # the verdict is kept: asking again raises again
        with pytest.raises(CorruptBlockError) as info:
            v.ensure(np.array([0, bad, 5]))
        assert "shard-1" in str(info.value) and "block 7" in str(info.value)
    good = np.setdiff1d(np.arange(len(v.state)), [bad])
    v.ensure(good)  # no error for the others
    assert not v.all_ok


def test_background_threads_finish_the_announced_blocks_alone() -> None:
    tokens, expected = _shards(2, 50)
    v = _verifier(tokens, expected, 2)
    v.announce(np.arange(len(v.state))[::-1])
    deadline = time.monotonic() + 10
    while not v.all_ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert v.all_ok and v._running == 0


def test_verdicts_reached_in_a_forked_worker_are_seen_by_the_parent() -> None:
    import multiprocessing

    tokens, expected = _shards(2, 20)
    v = _verifier(tokens, expected, 1)
    child = multiprocessing.get_context("fork").Process(target=v.ensure, args=(np.arange(len(v.state)),))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert v._ok == 0 and v.refresh()  # the parent hashed nothing, yet knows every block is good
