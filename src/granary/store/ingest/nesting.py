"""Bounds on JSON nesting, checked before a parser that recurses sees the record.

pyarrow's JSON parser recurses once per level and kills the process with a segmentation fault somewhere
below 10,000 levels; a record nested 5,000 levels deep parses but is then stored in a shard that Parquet
readers refuse. Records deeper than ``MAX_DEPTH`` are therefore quarantined, in two steps that keep
per-record Python out of the common path:

1. before pyarrow parses a block, :class:`DepthGuard` finds every line holding ``2 * GUARD_STRIDE`` or more
   opening brackets (one vectorised scan of the block, then one ``find`` per ``GUARD_STRIDE`` brackets),
   measures those few lines exactly and blanks out the ones that are too deep (so nothing near the crash
   depth reaches pyarrow);
2. after it parses, the nesting of the block's inferred schema is the deepest record's nesting; a block over
   the limit goes line by line, where only lines with more than ``MAX_DEPTH`` brackets are measured.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise

import numpy as np
import pyarrow as pa

MAX_DEPTH = 32
GUARD_STRIDE = 512
_TOKENS = re.compile(rb'\\.|["{}\[\]]', re.DOTALL)
_OPEN = (0x7B, 0x5B)  # { [


def too_deep() -> str:
    """The quarantine reason of a record nested deeper than the limit."""
    return (f"nested too deeply: more than {MAX_DEPTH} levels of objects/arrays; flatten the record or store the "
            f"nested part as a JSON string")


def json_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of one JSON text (brackets inside strings do not count); stops counting past ``limit``."""
    depth = best = 0
    in_string = False
    for m in _TOKENS.finditer(raw):
        c = raw[m.start()]
        if c == 0x5C:  # an escape pair, only meaningful inside a string
            continue
        if c == 0x22:
            in_string = not in_string
        elif in_string:
            continue
        elif c in _OPEN:
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        else:
            depth -= 1
    return best


def type_depth(typ: pa.DataType) -> int:
    """Levels of nesting of an Arrow type: 0 for a scalar, 1 per struct, list or map level (no recursion)."""
    best = 0
    stack = [(typ, 0)]
    while stack:
        t, above = stack.pop()
        if pa.types.is_nested(t):
            best = max(best, above + 1)
            stack.extend((t.field(i).type, above + 1) for i in range(t.num_fields))
    return best


class DepthGuard:
    """Blanks out, in place, the lines of a block nested deeper than ``MAX_DEPTH`` that have so many brackets
    that pyarrow could crash on them. Reuses its scratch arrays from block to block."""

    SCAN_BYTES = 1 << 20  # scanned a piece at a time so each piece stays in cache across the three passes

    def __init__(self) -> None:
        self._folded = np.empty(self.SCAN_BYTES, dtype=np.uint8)
        self._is_open = np.empty(self.SCAN_BYTES, dtype=bool)

    def blank_deep_lines(self, buf: bytearray, stop: int) -> Iterator[tuple[int, bytes]]:
        """(line index within the block, raw line) of each line it blanked out in ``buf[:stop]``."""
        for start, end in self._crowded_lines(buf, stop):
            raw = bytes(buf[start:end])
            if json_depth(raw) > MAX_DEPTH:
                line = buf.count(b"\n", 0, start)
                buf[start:end] = b" " * (end - start)
                yield line, raw

    def _opens(self, buf: bytearray, stop: int) -> np.ndarray:
        """Positions of every ``{`` and ``[`` in ``buf[:stop]``."""
        data = np.frombuffer(buf, dtype=np.uint8, count=stop)
        parts = []
        for s in range(0, stop, self.SCAN_BYTES):
            piece = data[s : s + self.SCAN_BYTES]
            folded, is_open = self._folded[: len(piece)], self._is_open[: len(piece)]
            np.bitwise_or(piece, 0x20, out=folded)  # '[' (0x5B) | 0x20 == '{' (0x7B); nothing else maps there
            np.equal(folded, 0x7B, out=is_open)
            parts.append(np.flatnonzero(is_open) + s)
        del data, piece  # no view of buf may outlive this call (the reader resizes it)
        return np.concatenate(parts)

    def _crowded_lines(self, buf: bytearray, stop: int) -> list[tuple[int, int]]:
        """Every line of ``buf[:stop]`` with at least ``2 * GUARD_STRIDE`` opening brackets (maybe a few with
        fewer): any ``GUARD_STRIDE`` consecutive brackets with no newline between them mark their line."""
        if stop < 2 * GUARD_STRIDE:
            return []
        opens = self._opens(buf, stop)
        if len(opens) < 2 * GUARD_STRIDE:
            return []
        lines: list[tuple[int, int]] = []
        marks = opens[:: GUARD_STRIDE].tolist()
        for a, b in pairwise(marks):
            if lines and a < lines[-1][1]:
                continue  # inside a line already found
            if buf.find(b"\n", a, b) < 0:
                start = buf.rfind(b"\n", 0, a) + 1
                end = buf.find(b"\n", b, stop)
                lines.append((start, stop if end < 0 else end))
        return lines
