"""Several batches planned, checked and gathered at once: the loader's hot path for one tokens source.

A chunk of steps is planned in one vectorised call (``TokenSource.plan_2d``); then groups of up to ``group``
batches are gathered with one kernel call into a reused buffer (see :mod:`granary.stream.gather`). Groups start
small and double (1, 2, 4, ...), so the first batch after opening or resuming waits for one batch's blocks only.
Before a group is gathered, every block it touches is checked (local shards: xxh3; encrypted shards: decrypted
and authenticated), so nothing unchecked is ever served; a block that fails stops the stream exactly at the
first batch that touches it, whatever the grouping.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from granary.stream.gather import BufferPool, Gather

if TYPE_CHECKING:
    from granary.stream.source import TokenSource

DEFAULT_GROUP = 16  # batches per kernel call once ramped up (1,024 rows of 64: 64 tasks of 16 rows per call)


class GroupGather:
    """Gathers the batches of ``(steps, batch)`` sample arrays a group at a time.

    Args:
        source: the tokens source.
        gather: the kernel (torch ``index_select`` or numpy).
        pool: reused output buffers.
        out_dtype: dtype of the delivered tokens (converted once per group when it differs from the stored one).
        group: batches per kernel call at most.
        lazy: the consumer reads the batches of a group in order in this thread (``num_threads=0``): with the
            numpy kernel each batch is then gathered when it is read (see :class:`LazyBatches`).
    """

    def __init__(self, source: TokenSource, *, gather: Gather, pool: BufferPool, out_dtype: np.dtype[Any],
                 group: int = DEFAULT_GROUP, lazy: bool = False) -> None:
        self.source = source
        self.kernel = gather
        self.pool = pool
        self.out_dtype = np.dtype(out_dtype)
        self.group = max(1, group)
        self._size = 1  # the current group size (doubles up to `group`)
        self.lazy = lazy

    def plans(self, samples: np.ndarray) -> Iterator[GroupPlan]:
        """The groups of a ``(steps, batch)`` array of samples, in order, planned in one vectorised call."""
        fields = self.source.plan_2d(samples)
        a = 0
        while a < len(samples):
            b = min(len(samples), a + self._size)
            self._size = min(self.group, self._size * 2)
            yield GroupPlan(samples[a:b], [f[a:b] for f in fields])
            a = b

    def gather(self, plan: GroupPlan) -> tuple[np.ndarray, np.ndarray | LazyBatches, Exception | None]:
        """``(samples, tokens, error)``: the samples ``(steps', batch)`` and tokens ``(steps', batch, seq_len)``
        (one array, or one ``(batch, seq_len)`` array per batch) of the group's first ``steps'`` batches: all of
        them unless a block fails its check (a corrupt block, an encrypted block that fails authentication), then
        the batches before the first one touching it, and the error to raise after them."""
        steps, width = plan.samples.shape
        flat = [f.ravel() for f in plan.fields]
        try:
            self.source.check(flat)
        except Exception:  # CorruptBlockError, CryptoError: raised at the first batch that touches the block
            for r in range(steps):
                try:
                    self.source.check([f[r] for f in plan.fields])
                except Exception as bad:
                    if r == 0:
                        return plan.samples[:0], np.empty((0, width, self.source.seq_len), self.out_dtype), bad
                    samples, tokens, _ = self.gather(GroupPlan(plan.samples[:r], [f[:r] for f in plan.fields]))
                    return samples, tokens, bad
            raise  # not reached: some batch of the group touched the bad block
        view = self.source.virtual
        if (self.lazy and view is not None and self.kernel.name == "numpy" and not self.pool.pin_memory
                and self.out_dtype == self.source.dtype and flat[2].all()):
            return plan.samples, LazyBatches(view, flat[1].reshape(steps, width)), None
        tokens = self._gather(flat).reshape(steps, width, self.source.seq_len)
        return plan.samples, tokens, None

    def _gather(self, flat: list[np.ndarray]) -> np.ndarray:
        source = self.source
        samples, elements, aligned = flat[0], flat[1], flat[2]
        view = source.virtual
        if view is not None and aligned.all() and self.kernel.name == "numpy" and not self.pool.pin_memory:
            buf = view[elements]  # numpy's fancy index makes its own array: no second copy into a pooled one
        else:
            buf = self.pool.take((len(samples), source.seq_len), source.dtype)
            if view is None:  # no strided view (remote shards, or encrypted ones read block by block)
                for j, s in enumerate(samples.tolist()):
                    source.copy_sample(s, buf[j])
            elif aligned.all():
                self.kernel(view, elements, buf)
            else:  # a few samples cross a shard boundary: gathered piece by piece
                ok = np.flatnonzero(aligned)
                if ok.size:
                    part = np.empty((ok.size, source.seq_len), dtype=source.dtype)
                    self.kernel(view, elements[ok], part)
                    buf[ok] = part
                for j in np.flatnonzero(~aligned).tolist():
                    source.copy_sample(int(samples[j]), buf[j])
        if self.out_dtype == buf.dtype:
            return buf
        out = self.pool.take(buf.shape, self.out_dtype)
        np.copyto(out, buf, casting="unsafe")  # widening (uint16 -> int64): exact; releases the GIL
        return out


@dataclass(frozen=True)
class GroupPlan:
    """Consecutive batches gathered together: their samples ``(steps, batch)`` and :class:`TokenPlan` fields."""

    samples: np.ndarray
    fields: list[np.ndarray]


class LazyBatches(Sequence[np.ndarray]):
    """The batches of a checked group, each gathered by one numpy fancy index when it is read.

    For a consumer that reads batch by batch in the gathering thread: each batch is a fresh array that the consumer
    uses while it is still in cache, and that is freed (and its memory reused by the next one) once dropped, like a
    plain ``memmap[rows]`` loop. Gathering the whole group into one array first (16 batches, 4 MiB at 64 x 2,048
    x 2 bytes) writes it back to memory before it is read: measured 1.3-1.4x more CPU per sample on the 2-core
    machine.
    """

    def __init__(self, view: np.ndarray, rows: np.ndarray) -> None:
        self._view = view
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, r: int) -> np.ndarray:  # type: ignore[override]
        return self._view[self._rows[r]]
