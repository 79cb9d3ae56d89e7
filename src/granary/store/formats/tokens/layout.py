"""Constants and struct layouts shared by the token shard writer and reader."""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"GRNTOK01"
VERSION = 1
HEADER_SIZE = 64
TRAILER = struct.Struct("<Q8s")  # footer offset, magic
HEADER = struct.Struct("<8sHHI")  # magic, version, dtype code, block_tokens (then zero padding to 64 bytes)
FOOTER_HEAD = struct.Struct("<QQQ")  # num_blocks, num_docs, num_tokens
BLOCK_ENTRY = np.dtype([("offset", "<u8"), ("length", "<u8"), ("xxh3", "<u8")])

DTYPES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
DTYPE_CODES: dict[str, int] = {"uint16": 1, "uint32": 2}
DEFAULT_BLOCK_BYTES = 1024 * 1024  # smallest allowed: a fresh reader verifies less before its first batch
MIN_BLOCK_BYTES = 1024 * 1024
MAX_BLOCK_BYTES = 4 * 1024 * 1024


def dtype_code(dtype: str | np.dtype) -> int:
    """The on-disk code of a token dtype name."""
    name = np.dtype(dtype).name
    if name not in DTYPE_CODES:
        raise ValueError(f"token dtype must be uint16 or uint32, got {name}")
    return DTYPE_CODES[name]
