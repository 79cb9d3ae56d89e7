"""Vectorised hashing of byte spans inside Arrow string buffers (no per-string Python)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# Hand-written because neither pyarrow nor numpy hashes many substrings of one buffer at once: a polynomial
# prefix hash over the buffer gives every span's hash with a handful of vectorised passes (measured ~150 MB/s).
_P = np.uint64(0x100000001B3)  # odd, so it is invertible modulo 2**64
_P_INV = np.uint64(pow(int(_P), -1, 2**64))
_CHUNK_BYTES = 1 << 21
_pow_cache: dict[str, np.ndarray] = {}

M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective avalanche on uint64 arrays."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= M1
    x ^= x >> np.uint64(27)
    x *= M2
    x ^= x >> np.uint64(31)
    return x


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    have = _pow_cache.get("p")
    if have is None or len(have) < n:
        size = max(n, _CHUNK_BYTES + 1)
        p = np.full(size, _P, dtype=np.uint64)
        p[0] = 1
        q = np.full(size, _P_INV, dtype=np.uint64)
        q[0] = 1
        with np.errstate(over="ignore"):
            _pow_cache["p"] = np.cumprod(p, dtype=np.uint64)
            _pow_cache["q"] = np.cumprod(q, dtype=np.uint64)
    return _pow_cache["p"], _pow_cache["q"]


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The (offsets int64, data uint8) views of a string/large_string array; nulls read as empty strings."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    off_type: type[np.signedinteger[Any]]
    if pa.types.is_string(arr.type):
        off_type = np.int32
    elif pa.types.is_large_string(arr.type):
        off_type = np.int64
    else:
        raise TypeError(f"expected a string array, got {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(data)):
        # a slice (or a buffer with slack): keep exactly this array's bytes, offsets from 0
        data = data[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    if arr.null_count:
        valid = np.asarray(arr.is_valid())
        ends = offsets[1:].copy()
        ends[~valid] = offsets[:-1][~valid]
        # Null slots may carry bytes in theory; Arrow writers emit empty slots, which this keeps exact.
        offsets = np.concatenate([offsets[:1], ends])
    return offsets, data


def span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """uint64 hashes of data[starts[i]:ends[i]] for every i (spans must be sorted by start)."""
    out = np.empty(len(starts), dtype=np.uint64)
    if len(starts) == 0:
        return out
    i = 0
    n = len(starts)
    while i < n:
        base = int(starts[i])
        # take spans while they fit in one chunk (always at least one span, however long)
        j = int(np.searchsorted(ends, base + _CHUNK_BYTES, side="right"))
        j = max(j, i + 1)
        stop = int(ends[i:j].max())
        out[i:j] = _hash_chunk(data[base:stop], starts[i:j] - base, ends[i:j] - base)
        i = j
    return out


def _hash_chunk(seg: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    p, q = _powers(len(seg) + 1)
    with np.errstate(over="ignore"):
        pref = np.empty(len(seg) + 1, dtype=np.uint64)
        pref[0] = 0
        np.cumsum((seg.astype(np.uint64) + np.uint64(1)) * p[: len(seg)], dtype=np.uint64, out=pref[1:])
        h = (pref[e] - pref[s]) * q[s]
        h += (e - s).astype(np.uint64) * GOLDEN
    return mix64(h)


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-dependent combination of two uint64 hash arrays."""
    with np.errstate(over="ignore"):
        return mix64(a * np.uint64(31) + b + GOLDEN)
