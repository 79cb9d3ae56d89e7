"""State that the worker processes of one gateway share through memory: what each backend caches, and load.

Each worker process balances on its own, so without sharing, a worker knows only the prompts it sent itself:
the next turn of a conversation that reaches another worker finds no trace of where the first turn went, and
each worker sees only its own requests in flight. A :class:`SharedRouteState` is a fixed-size table over a
buffer: an ``mmap`` of one file per route in multi-process gateways, a ``bytearray`` in one process. It needs
no locks; every table is a hint, so a lost update costs at most one cache miss:

- *backend slots*: up to 64 backends of the route, each owning one bit (claimed by writing its name's hash to
  a free slot and reading it back);
- *block index*: a direct-mapped table ``prompt block hash -> bitmask of the backends that cache it`` (the
  index of the engines' prefix caches, as every worker's traffic built it); a collision overwrites;
- *placements*: ``conversation key -> (backend, prompt blocks sent there)``, the last placement of each
  conversation;
- *load*: one row per worker of per-backend (work, requests) in flight; a worker writes only its own row,
  readers sum.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

BACKEND_SLOTS = 64
PLACEMENT_SLOTS = 1 << 16
BLOCK_SLOTS = 1 << 17
LOAD_SLOTS = 1 << 10
_U64 = 8


def state_bytes(num_workers: int, *, placement_slots: int = PLACEMENT_SLOTS, block_slots: int = BLOCK_SLOTS,
                load_slots: int = LOAD_SLOTS) -> int:
    """Size of the buffer for ``num_workers`` workers."""
    return (BACKEND_SLOTS + placement_slots * 3 + block_slots * 2 + num_workers * load_slots * 2) * _U64


class SharedRouteState:
    """Backend slots, block index, placements and per-worker load of one route, over a shared buffer.

    Args:
        buf: a writable buffer of :func:`state_bytes` bytes (zeroed when new).
        worker: this process's row in the load table.
        num_workers: rows in the load table.
        placement_slots: entries of the placement table.
        block_slots: entries of the block index.
        load_slots: backend slots per load row (backends are slotted by their name's hash).
    """

    def __init__(self, buf: bytearray | mmap.mmap, *, worker: int = 0, num_workers: int = 1,
                 placement_slots: int = PLACEMENT_SLOTS, block_slots: int = BLOCK_SLOTS,
                 load_slots: int = LOAD_SLOTS) -> None:
        need = state_bytes(num_workers, placement_slots=placement_slots, block_slots=block_slots,
                           load_slots=load_slots)
        if len(buf) < need:
            raise ValueError(f"the shared buffer has {len(buf)} bytes; {need} are needed")
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
        self.buf = buf
        view = memoryview(buf)
        a = BACKEND_SLOTS * _U64
        b = a + placement_slots * 3 * _U64
        c = b + block_slots * 2 * _U64
        self.slots = view[:a].cast("Q")
        self.placements = view[a:b].cast("Q")
        self.blocks = view[b:c].cast("Q")
        self.loads = view[c:need].cast("d")
        self.placement_slots = placement_slots
        self.block_slots = block_slots
        self.load_slots = load_slots
        self.worker = worker
        self.num_workers = num_workers
        self._bits: dict[int, int] = {}
        row = worker * load_slots * 2
        for i in range(row, row + load_slots * 2):  # a restarted worker starts with nothing in flight
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

    # -- backend slots ---------------------------------------------------------------------------------
    def bit(self, backend: int) -> int:
        """The bit of ``backend`` (its name's hash, non-zero) in the block index; 0 when all 64 slots are taken
        (such a backend is then known by placements and load only)."""
        bit = self._bits.get(backend)
        slots = self.slots
        if bit is not None and slots[bit.bit_length() - 1] == backend:
            return bit
        for i in range(BACKEND_SLOTS):
            if slots[i] == backend:
                break
            if slots[i] == 0:
                slots[i] = backend
                if slots[i] == backend:  # another worker may have claimed it at the same moment
                    break
        else:
            return 0
        bit = self._bits[backend] = 1 << i
        return bit

    def release(self, backend: int) -> None:
        """``backend`` left the route: free its slot and clear its bit from the block index."""
        bit = self.bit(backend)
        if not bit:
            return
        keep = ~bit & 0xFFFF_FFFF_FFFF_FFFF
        blocks = self.blocks
        for i in range(1, self.block_slots * 2, 2):
            if blocks[i] & bit:
                blocks[i] &= keep
        self.slots[bit.bit_length() - 1] = 0
        self._bits.pop(backend, None)

    # -- block index -----------------------------------------------------------------------------------
    def holders(self, block: int) -> int:
        """Bitmask of the backends that cache prompt block ``block`` (its chained hash)."""
        i = (block % self.block_slots) * 2
        return self.blocks[i + 1] if self.blocks[i] == block else 0

    def hold(self, blocks: list[int], bit: int) -> None:
        """Note that the backend of ``bit`` caches these blocks (a colliding older block is forgotten)."""
        table = self.blocks
        n = self.block_slots
        for h in blocks:
            i = (h % n) * 2
            if table[i] == h:
                table[i + 1] |= bit
            else:
                table[i + 1] = bit
                table[i] = h

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
    def add_load(self, backend: int, delta: float, requests: int = 0) -> None:
        """Change this worker's work (and requests) in flight on ``backend`` (its name's hash)."""
        i = (self.worker * self.load_slots + backend % self.load_slots) * 2
        loads = self.loads
        loads[i] = max(0.0, loads[i] + delta)
        if requests:
            loads[i + 1] = max(0.0, loads[i + 1] + requests)

    def others_load(self, backend: int) -> float:
        """Work in flight on ``backend`` from the other workers."""
        return self.others(backend)[0]

    def others(self, backend: int) -> tuple[float, float]:
        """(work, requests) in flight on ``backend`` from the other workers."""
        slot = backend % self.load_slots
        work = requests = 0.0
        loads = self.loads
        for w in range(self.num_workers):
            if w != self.worker:
                i = (w * self.load_slots + slot) * 2
                work += loads[i]
                requests += loads[i + 1]
        return work, requests

    def close(self) -> None:
        """Release the views and the mapping."""
        for view in (self.slots, self.placements, self.blocks, self.loads):
            view.release()
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
