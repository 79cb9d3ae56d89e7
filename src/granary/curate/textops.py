"""Vectorised byte-level text operations over a TextView: substring search, span classes, span gathering."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from granary.curate.textview import Spans, TextView, lower_ascii

TERMINAL_PUNCT_ASCII = b'.!?"\''
# ellipsis, CJK full stop / exclamation / question marks, closing guillemet and quotes
TERMINAL_PUNCT_UTF8 = ("\u2026", "\u3002", "\uff01", "\uff1f", "\u00bb", "\u201d", "\u2019")


def find_all(data: np.ndarray, pattern: bytes, *, lower: bool = False) -> np.ndarray:
    """Start positions of every occurrence of `pattern` in `data` (vectorised, overlapping allowed)."""
    m = len(pattern)
    if m == 0 or len(data) < m:
        return np.zeros(0, np.int64)
    hay = lower_ascii(data) if lower else data
    pat = np.frombuffer(pattern.lower() if lower else pattern, dtype=np.uint8)
    cand = np.flatnonzero(hay[: len(hay) - m + 1] == pat[0])
    for j in range(1, m):
        if len(cand) == 0:
            break
        cand = cand[hay[cand + j] == pat[j]]
    return cand.astype(np.int64)


def count_in_docs(view: TextView, pattern: bytes, *, lower: bool = False) -> np.ndarray:
    """Occurrences of `pattern` per document (matches never cross documents)."""
    pos = find_all(view.lower_data, pattern.lower()) if lower else find_all(view.data, pattern)
    if len(pos) == 0:
        return np.zeros(view.num_docs, np.int64)
    doc = np.searchsorted(view.offsets, pos, side="right") - 1
    inside = pos + len(pattern) <= view.offsets[doc + 1]
    return np.bincount(doc[inside], minlength=view.num_docs)[: view.num_docs]


def spans_containing(spans: Spans, positions: np.ndarray, length: int) -> np.ndarray:
    """Boolean per span: does a match [p, p+length) lie inside it? (spans sorted and non-overlapping)."""
    hit = np.zeros(len(spans), dtype=bool)
    if len(positions) == 0 or len(spans) == 0:
        return hit
    k = np.searchsorted(spans.starts, positions, side="right") - 1
    ok = (k >= 0) & (positions + length <= spans.ends[np.maximum(k, 0)])
    hit[k[ok]] = True
    return hit


def ends_with_terminal(view: TextView, spans: Spans, *, exclude_ellipsis: bool = False) -> np.ndarray:
    """Boolean per span: does it end with terminal punctuation?"""
    last = view.last_bytes(spans, 3)
    out = np.isin(last[:, 2], np.frombuffer(TERMINAL_PUNCT_ASCII, np.uint8)) & (spans.ends > spans.starts)
    for ch in TERMINAL_PUNCT_UTF8:
        b = np.frombuffer(ch.encode(), np.uint8)
        out |= (last[:, 3 - len(b) :] == b).all(axis=1)
    if exclude_ellipsis:
        out &= ~ends_with_ellipsis(view, spans)
    return out


def ends_with_ellipsis(view: TextView, spans: Spans) -> np.ndarray:
    """Boolean per span: ends with '...' or '…'."""
    last = view.last_bytes(spans, 3)
    dots = (last == ord(".")).all(axis=1)
    uni = (last == np.frombuffer("…".encode(), np.uint8)).all(axis=1)
    return dots | uni


def starts_with_any(view: TextView, spans: Spans, prefixes: tuple[str, ...]) -> np.ndarray:
    """Boolean per span: does it start with one of `prefixes`?"""
    k = max((len(p.encode()) for p in prefixes), default=1)
    first = view.first_bytes(spans, k)
    out = np.zeros(len(spans), dtype=bool)
    for p in prefixes:
        b = np.frombuffer(p.encode(), np.uint8)
        out |= (first[:, : len(b)] == b).all(axis=1)
    return out


def words_per_span(words: Spans, spans: Spans) -> np.ndarray:
    """Number of words starting inside each span."""
    return np.searchsorted(words.starts, spans.ends, side="left") - np.searchsorted(
        words.starts, spans.starts, side="left"
    )


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """np.concatenate([arange(s, s + n) for s, n in zip(starts, lengths)]) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    nz = lengths > 0
    starts, lengths = starts[nz], lengths[nz]
    ends_cum = np.cumsum(lengths)
    steps = np.ones(total, dtype=np.int64)
    steps[0] = starts[0]
    steps[ends_cum[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(steps)


def gather_spans(view: TextView, spans: Spans, *, sep: bytes = b"\n") -> pa.Array:
    """A new string array: for each document, its kept spans joined by `sep` (documents without spans: '')."""
    n = view.num_docs
    lengths = spans.ends - spans.starts
    idx = concat_ranges(spans.starts, lengths)
    body = view.data[idx]
    per_doc_bytes = np.bincount(spans.doc, weights=lengths, minlength=n)[:n].astype(np.int64)
    per_doc_spans = np.bincount(spans.doc, minlength=n)[:n]
    if sep and len(spans):
        # insert the separator after every span except each document's last one
        is_last = np.ones(len(spans), dtype=bool)
        is_last[:-1] = spans.doc[1:] != spans.doc[:-1]
        insert_at = np.cumsum(lengths)[~is_last]
        body = np.insert(body, np.repeat(insert_at, len(sep)), np.tile(np.frombuffer(sep, np.uint8),
                                                                      len(insert_at)))
        per_doc_bytes = per_doc_bytes + np.maximum(per_doc_spans - 1, 0) * len(sep)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_doc_bytes, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(body.tobytes())).cast(
        pa.string()
    )


def segment_max(values: np.ndarray, seg: np.ndarray, n: int, *, fill: float = 0.0) -> np.ndarray:
    """Per-segment maximum of `values` (segments with no value get `fill`)."""
    out = np.full(n, fill, dtype=np.float64)
    if len(values):
        np.maximum.at(out, seg, values.astype(np.float64))
    return out


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
