"""Gather kernels and reused output buffers for the token loader's hot path.

A batch of ``B`` fixed-length samples is ``B`` row copies out of one strided view over every mapped shard (see
``TokenSource._build_local_index``). Where the time went before this module (py-spy on the 2-core machine, 1 GiB
version, batch 64 x 2,048): numpy fancy indexing copies rows with the GIL held in a loop that does not scale with
Python threads, and every batch was a fresh 256 KiB allocation whose pages the kernel faulted in again (about a
third of the gather's time). Here:

- :class:`TorchGather` copies the rows of *several batches at once* with ``torch.index_select`` into a reused
  buffer: a native kernel (one ``memcpy`` per row) that runs without the GIL, so the loader's gather threads
  copy their groups in parallel (see :func:`one_kernel_thread` for why not torch's own thread team);
- :class:`NumpyGather` is the fallback without torch: one fancy index per batch (numpy cannot gather an
  overlapping strided view into an ``out=`` buffer without first copying the whole view);
- :class:`BufferPool` hands out output buffers and takes one back only once nothing outside the pool refers to it
  (a batch the caller keeps is never overwritten), optionally in pinned memory for fast host-to-device copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# numpy dtypes torch has full kernels for, with the same bytes (uint16/uint32 are gathered as int16/int32 views)
_IDLE_REFS = 3  # see BufferPool.take
_SAME_BYTES: dict[np.dtype[Any], np.dtype[Any]] = {np.dtype("uint16"): np.dtype("int16"),
                                            np.dtype("uint32"): np.dtype("int32")}


class Gather(Protocol):
    """Copies ``view[rows[i]]`` into ``out[i]`` for every ``i`` (``out`` is C-contiguous, same dtype as ``view``)."""

    name: str

    def __call__(self, view: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None: ...


class NumpyGather:
    """One numpy fancy index per call (the GIL is held; used when torch is not installed)."""

    name = "numpy"

    def __call__(self, view: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        out[...] = view[rows]


class TorchGather:
    """``torch.index_select`` from the strided view into ``out``: one thread, without the GIL."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._views: dict[int, Any] = {}  # id(view) -> tensor over it (views live as long as their source)

    def tensor(self, array: np.ndarray) -> Any:
        """A tensor sharing ``array``'s memory (read-only mappings included; nothing writes through it)."""
        array = array.view(_SAME_BYTES.get(array.dtype, array.dtype))
        if array.flags.writeable:
            return self._torch.from_numpy(array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
            return self._torch.from_numpy(array)

    def __call__(self, view: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        src = self._views.get(id(view))
        if src is None:
            src = self._views[id(view)] = self.tensor(view)
        torch = self._torch
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        with one_kernel_thread():
            torch.index_select(src, 0, idx, out=self.tensor(out))


@contextlib.contextmanager
def one_kernel_thread() -> Iterator[None]:
    """Run torch's kernels in the calling thread only, for this block.

    The loader's parallelism is its own gather threads, each copying its share of the rows: OpenMP's thread
    team, which torch uses by default, spins at a barrier until every member has finished, and on a loaded
    machine (more runnable threads than cores) a descheduled member stalls the team for a time slice; measured
    on the 2-core machine at load 14: 1.1 M samples/s with one thread, 0.06-0.16 M with a team of two. OpenMP's
    thread count is per thread (``omp_set_num_threads``), so this neither changes ``torch.get_num_threads()``
    for other threads nor for threads started later, and it is restored on exit.
    """
    omp = _openmp()
    prev = omp.omp_get_max_threads() if omp is not None else 1
    if prev != 1:
        omp.omp_set_num_threads(1)
    try:
        yield
    finally:
        if prev != 1:
            omp.omp_set_num_threads(prev)


@functools.cache
def _openmp() -> Any:
    """The OpenMP runtime torch loaded (libgomp or Intel's libiomp), or None (then torch's default applies)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.omp_get_max_threads.restype = ctypes.c_int
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    log.debug("no OpenMP runtime found among torch's libraries; gather kernels use torch's thread setting")
    return None


def make_gather(kind: str = "auto", *, want_torch: bool = False, threads: int | None = None) -> Gather:
    """``torch`` (native kernel outside the GIL), ``numpy``, or ``auto``.

    ``auto`` with ``threads=0`` (batches gathered in the consuming thread) is numpy: one fancy index per batch
    into a fresh array whose pages stay in cache, measured 1.3-1.4x torch's ``index_select`` into a grouped
    buffer on the 2-core machine (the GIL costs nothing there: no other gather thread waits for it). Otherwise
    torch when it is already imported or ``want_torch`` (pinned buffers, tensors wanted), else numpy, so a
    numpy-only reader never pays torch's import (~2 s)."""
    if kind not in ("auto", "torch", "numpy"):
        raise ValueError(f"gather must be 'auto', 'torch' or 'numpy', got {kind!r}")
    if kind == "numpy" or (kind == "auto" and not want_torch and (threads == 0 or "torch" not in sys.modules)):
        return NumpyGather()
    try:
        return TorchGather()
    except ImportError:
        if kind == "torch":
            raise ImportError("gather='torch' needs PyTorch: pip install 'granary[torch]'") from None
        return NumpyGather()


class BufferPool:
    """Output buffers of one shape and dtype, reused once nothing outside the pool refers to them.

    A buffer handed out is referenced by the arrays (or tensors) viewing it; when the caller has dropped them all,
    only the pool's own reference is left and the next ``take`` reuses it instead of allocating (fresh memory
    costs a page fault per 4 KiB on first write). Batches the caller keeps are never overwritten.

    Args:
        keep: buffers kept for reuse at most.
        pin_memory: allocate page-locked memory (for ``tensor.to("cuda", non_blocking=True)``); without an
            accelerator this falls back to ordinary memory with a warning, as ``DataLoader`` does.
    """

    def __init__(self, *, keep: int = 4, pin_memory: bool = False) -> None:
        self.keep = keep
        self.pin_memory = pin_memory and _can_pin()
        self._free: list[tuple[np.ndarray, Any]] = []  # (buffer, owner of its memory), most recently used last
        self._lock = threading.Lock()
        self.allocated = 0  # buffers allocated (for tests and figures)

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A C-contiguous buffer of ``shape`` and ``dtype``, reused when one is free."""
        with self._lock:
            for i, entry in enumerate(self._free):
                # Every view of the buffer (a batch, a tensor over one) refers to the owner of its memory. Idle,
                # the owner is referred to by this entry, and by the entry's buffer itself or its `.base`: with
                # getrefcount's argument, 3. Nothing else is bound to it here.
                if sys.getrefcount(entry[1]) == _IDLE_REFS and entry[0].shape == shape and entry[0].dtype == dtype:
                    self._free.append(self._free.pop(i))
                    return entry[0]
            buf = self._allocate(shape, dtype)
            self._free.append((buf, buf if buf.base is None else buf.base))
            if len(self._free) > self.keep:
                self._free.pop(0)  # the pool forgets the oldest; whoever holds it keeps it alive
            self.allocated += 1
            return buf

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        if self.pin_memory:
            import torch

            native = _SAME_BYTES.get(np.dtype(dtype), np.dtype(dtype))
            tensor = torch.empty(shape, dtype=getattr(torch, native.name), pin_memory=True)
            return tensor.numpy().view(dtype)  # its base is the pinned tensor, which owns the memory
        return np.empty(shape, dtype=dtype)


def _can_pin() -> bool:
    try:
        import torch
    except ImportError:
        warnings.warn("pin_memory=True needs PyTorch; using ordinary memory", stacklevel=3)
        return False
    if not torch.cuda.is_available():
        warnings.warn("pin_memory=True but no accelerator is available; using ordinary memory", stacklevel=3)
        return False
    return True
