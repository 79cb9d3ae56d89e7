"""File checksums: xxh3-128 over the stored bytes, streamed in large reads."""

from __future__ import annotations

from typing import IO

import xxhash

READ_SIZE = 8 * 1024 * 1024


def file_xxh3_128(path: str) -> tuple[str, int]:
    """Return (xxh3-128 hex digest, size in bytes) of a local file."""
    h = xxhash.xxh3_128()
    size = 0
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def stream_xxh3_128(f: IO[bytes]) -> tuple[str, int]:
    """Return (xxh3-128 hex digest, size) of everything readable from a binary file object."""
    h = xxhash.xxh3_128()
    size = 0
    while True:
        chunk = f.read(READ_SIZE)
        if not chunk:
            break
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size
