"""Block verification for memory-mapped token shards: once per process, shared by the reading thread and
background threads that work through the blocks in the order the loader will first touch them."""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import xxhash

from granary.stream import background
from granary.stream.errors import CorruptBlockError

log = logging.getLogger(__name__)

_TODO, _OK, _BAD = 0, 1, 2  # verdicts (shared with forked workers)
_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and pages fault in on first touch
_MADV_HUGEPAGE = 14  # read-ahead into 2 MiB page-cache folios, mapped with huge pages (EINVAL without THP: ignored)


def populate(array: np.ndarray) -> None:
    """Pre-fault the page tables of a memory-mapped array range (one syscall, no GIL held).

    The range is first marked for huge pages: pages read from disk from then on come in 2 MiB folios, which the
    gather reads with a fraction of the TLB misses (pages already cached keep the folios their writer left:
    token shards are written so that those are 2 MiB too, see ``TokenShardWriter._emit``)."""
    if array.nbytes == 0:
        return
    madvise = _madvise()
    if madvise is None:
        return
    page = mmap.PAGESIZE
    start = array.ctypes.data // page * page
    length = array.ctypes.data + array.nbytes - start
    madvise(start, length, _MADV_HUGEPAGE)
    madvise(start, length, _MADV_POPULATE_READ)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise (Linux only), looked up once: building a ctypes prototype per call costs ~40 us."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def verify_threads() -> int:
    """Background hashing threads per verifier: the cores this process may use, less the reading thread's, at
    most 4 (hashing from memory runs at ~8 GB/s per thread; a few threads reach the memory's bandwidth)."""
    raw = os.environ.get("GRANARY_VERIFY_THREADS")
    if raw:
        return max(1, int(raw))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(4, cores - 1))


class _ForkSafe(Protocol):
    def _after_fork(self) -> None: ...


def reset_after_fork(obj: _ForkSafe) -> None:
    """Call ``obj._after_fork()`` in every forked child while ``obj`` is alive (threads do not survive a fork)."""
    ref = weakref.ref(obj)

    def hook() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork()

    os.register_at_fork(after_in_child=hook)


class BlockVerifier:
    """Checks every block's xxh3-64 at most once per process, and about once across the DataLoader workers
    forked from it (hashing releases the GIL, so threads hash in parallel); a block that fails is never served:
    ``ensure`` raises CorruptBlockError naming shard and block.

    Args:
        keys: object key of each shard.
        tokens: token array of each shard (memory-mapped).
        block_tokens: tokens per block of each shard.
        expected: recorded xxh3-64 of each shard's blocks.
    """

    def __init__(self, keys: Sequence[str], tokens: Sequence[np.ndarray], block_tokens: Sequence[int],
                 expected: Sequence[np.ndarray], *, shared: bool = True) -> None:
        self._keys = list(keys)
        self._tokens = list(tokens)
        self._block_tokens = list(block_tokens)
        self._expected = [np.asarray(e, dtype=np.uint64) for e in expected]
        counts = [len(e) for e in self._expected]
        self.base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._shard_of = np.repeat(np.arange(len(counts)), counts)
        total = int(self.base[-1])
        # Verdicts live in anonymous shared memory: DataLoader workers forked from this process read and write
        # the same bytes, so a block is hashed about once per rank instead of once per worker. It has no name
        # and vanishes with the last process that maps it. Claims (who is hashing what) stay per process, so a
        # worker that dies mid-hash leaves nothing for the others to wait on.
        # (`shared=False` keeps them private: for work whose result is this process's own memory.)
        self._shared = mmap.mmap(-1, max(total, 1)) if shared else None
        self.state = (np.frombuffer(self._shared, dtype=np.int8, count=total) if self._shared is not None
                      else np.zeros(total, dtype=np.int8))
        self._busy = np.zeros(total, dtype=bool)
        self._queued = np.zeros(total, dtype=bool)  # ever handed to the background threads (never cleared)
        self.all_ok = total == 0
        self._ok = 0  # verdicts this process reached
        self._quiet = 0  # ensure() calls that found nothing to do since the last full look
        self._cond = threading.Condition()
        self._errors: dict[int, Exception] = {}
        self._queue: collections.deque[int] = collections.deque()
        self._running = 0  # background threads alive
        self.threads = verify_threads()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child (DataLoader worker) the background thread does not exist and its lock may be held:
        start afresh, keeping only the verdicts already reached."""
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._running = 0
        self._busy = np.zeros_like(self._busy)
        self._queued = np.zeros_like(self._queued)

    def ensure(self, blocks: np.ndarray) -> None:
        """Verify (or wait for) the given global block ids; raise CorruptBlockError for a bad one.

        The calling thread first hashes the blocks nobody has claimed, last first (the background threads
        work from the front of the same order), then waits for those the background threads are hashing.
        """
        if self.all_ok:
            return
        need = blocks[self.state[blocks] != _OK]
        if need.size == 0:
            self._quiet += 1
            if self._quiet % 64 == 0:  # other processes may have verified the rest
                self.refresh()
            return
        need = list(dict.fromkeys(need.tolist()))
        for g in reversed(need):
            self._check(g, wait=False)
        for g in need:
            self._check(g, wait=True)

    def announce(self, blocks: np.ndarray) -> None:
        """Blocks the loader will touch soon, in order: the background thread verifies them ahead of use, the
        latest announcement first. An announcement whose unverified blocks were all queued before is ignored
        (the common case: every chunk of a pass re-announces blocks of the first ones), so after a seek the
        background keeps its earlier order; the reader still hashes any block it needs that nobody has claimed."""
        if self.all_ok:
            return
        blocks = blocks[self.state[blocks] == _TODO]
        if not blocks.size or self._queued[blocks].all():  # the common case while a pass reads: all queued
            return
        _, first = np.unique(blocks, return_index=True)  # vectorised: a chunk announces thousands of blocks
        ordered = blocks[np.sort(first)]
        self._queued[ordered] = True
        todo = ordered.tolist()
        with self._cond:
            self._queue.extendleft(reversed(todo))  # the latest announcement is the most urgent
            self._cond.notify_all()
            while self._running < min(self.threads, len(self._queue)):
                self._running += 1
                background.start(_background, weakref.ref(self), name=f"granary-verify-{self._running}")

    def refresh(self) -> bool:
        """Whether every block is verified, by this process or another one sharing the verdicts."""
        self.all_ok = bool((self.state == _OK).all())
        return self.all_ok

    def _check(self, g: int, *, wait: bool) -> None:
        """Hash block ``g`` unless it is verified or being hashed here; with ``wait``, also wait for this
        process's other thread and raise if the block is bad (without, a bad block is only logged: its reader
        will raise). A block found bad by another process is hashed again here to name what was found."""
        with self._cond:
            while self._busy[g]:
                if not wait:
                    return
                self._cond.wait()
            if self.state[g] == _OK:
                return
            if g in self._errors:
                if wait:
                    raise self._errors[g]
                return
            self._busy[g] = True
        error = self._hash(g)
        with self._cond:
            self._busy[g] = False
            if error is None:
                self.state[g] = _OK
                self._ok += 1
                if self._ok == len(self.state):
                    self.all_ok = True
            else:
                self.state[g] = _BAD
                self._errors[g] = error
            self._cond.notify_all()
        if error is not None:
            if wait:
                raise error
            log.warning("%s", error)

    def _hash(self, g: int) -> Exception | None:
        """Check block ``g``: None when it is good, else the error its readers get."""
        s = int(self._shard_of[g])
        block = g - int(self.base[s])
        bt = self._block_tokens[s]
        data = self._tokens[s][block * bt : (block + 1) * bt]
        actual = xxhash.xxh3_64_intdigest(data.data)
        expected = int(self._expected[s][block])
        if actual == expected:
            return None
        return CorruptBlockError(self._keys[s], block, expected=f"{expected:016x}", actual=f"{actual:016x}")


def _background(ref: weakref.ref[BlockVerifier]) -> None:
    """Verify announced blocks until the queue is empty or the verifier (its dataset) is gone."""
    while True:
        verifier = ref()
        if verifier is None:
            return
        with verifier._cond:
            if not verifier._queue or background.exiting():
                verifier._running -= 1
                return
            g = verifier._queue.popleft()
        verifier._check(g, wait=False)
        del verifier
