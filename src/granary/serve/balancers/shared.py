"""State that the worker processes of one gateway share through memory: where conversations live, and load.

Each worker process balances on its own, so without sharing, the next turn of a conversation that reaches
another worker finds no trace of where the first turn went, and each worker sees only its own requests in
flight. A :class:`SharedRouteState` is a fixed-size table over a buffer: an ``mmap`` of one file per route in
multi-process gateways, a ``bytearray`` in one process. It needs no locks:

- *placements*: a direct-mapped table ``conversation key -> (backend, prompt blocks sent there)``; a collision
  overwrites, a torn write at worst sends one request to a backend without its prefix (the index is a hint);
- *load*: one row per worker of per-backend work in flight; a worker writes only its own row, readers sum.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

PLACEMENT_SLOTS = 1 << 16
LOAD_SLOTS = 1 << 10
_U64 = 8


def state_bytes(num_workers: int, *, placement_slots: int = PLACEMENT_SLOTS, load_slots: int = LOAD_SLOTS) -> int:
    """Size of the buffer for ``num_workers`` workers."""
    return placement_slots * 3 * _U64 + num_workers * load_slots * _U64


class SharedRouteState:
    """Placements and per-worker load of one route, over a shared buffer.

    Args:
        buf: a writable buffer of :func:`state_bytes` bytes (zeroed when new).
        worker: this process's row in the load table.
        num_workers: rows in the load table.
        placement_slots: entries of the placement table.
        load_slots: backend slots per load row (backends are slotted by their name's hash).
    """

    def __init__(self, buf: bytearray | mmap.mmap, *, worker: int = 0, num_workers: int = 1,
                 placement_slots: int = PLACEMENT_SLOTS, load_slots: int = LOAD_SLOTS) -> None:
        need = state_bytes(num_workers, placement_slots=placement_slots, load_slots=load_slots)
        if len(buf) < need:
            raise ValueError(f"the shared buffer has {len(buf)} bytes; {need} are needed")
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
        self.buf = buf
        view = memoryview(buf)
        split = placement_slots * 3 * _U64
        self.placements = view[:split].cast("Q")
        self.loads = view[split:need].cast("d")
        self.placement_slots = placement_slots
        self.load_slots = load_slots
        self.worker = worker
        self.num_workers = num_workers
        row = worker * load_slots
        for i in range(row, row + load_slots):  # a restarted worker starts with nothing in flight
            self.loads[i] = 0.0

    @classmethod
    def in_memory(cls, num_workers: int = 1, worker: int = 0) -> SharedRouteState:
        """A private table (one process, or tests)."""
        return cls(bytearray(state_bytes(num_workers)), worker=worker, num_workers=num_workers)

    @classmethod
    def open(cls, path: str | Path, *, worker: int, num_workers: int) -> SharedRouteState:
        """Map ``path`` (created zeroed at its full size by the first opener)."""
        size = state_bytes(num_workers)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(buf, worker=worker, num_workers=num_workers)

    # -- placements ------------------------------------------------------------------------------------
    def place(self, key: int, backend: int, blocks: int) -> None:
        """Note that conversation ``key`` (a 64-bit hash) was sent to ``backend`` (its name's hash) with
        ``blocks`` prompt blocks, so that backend now caches them."""
        i = (key % self.placement_slots) * 3
        p = self.placements
        p[i + 1] = backend
        p[i + 2] = blocks
        p[i] = key

    def placement(self, key: int) -> tuple[int, int] | None:
        """(backend hash, blocks) of the last placement of conversation ``key``, if the table still has it."""
        i = (key % self.placement_slots) * 3
        p = self.placements
        if key == 0 or p[i] != key:
            return None
        return p[i + 1], p[i + 2]

    # -- load ------------------------------------------------------------------------------------------
    def add_load(self, backend: int, delta: float) -> None:
        """Change this worker's work in flight on ``backend`` (its name's hash)."""
        i = self.worker * self.load_slots + backend % self.load_slots
        self.loads[i] = max(0.0, self.loads[i] + delta)

    def others_load(self, backend: int) -> float:
        """Work in flight on ``backend`` from the other workers."""
        slot = backend % self.load_slots
        total = 0.0
        for w in range(self.num_workers):
            if w != self.worker:
                total += self.loads[w * self.load_slots + slot]
        return total

    def close(self) -> None:
        """Release the views and the mapping."""
        self.placements.release()
        self.loads.release()
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
