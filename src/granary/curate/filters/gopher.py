"""Gopher quality and repetition filters (Rae et al. 2021), vectorised over the shared TextView."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from granary.curate.errors import PipelineSpecError
from granary.curate.hashing import combine, span_hashes
from granary.curate.step import DocBatch, Step, StepConfig, register_step
from granary.curate.textops import (
    count_in_docs,
    ends_with_ellipsis,
    safe_ratio,
    segment_max,
    starts_with_any,
)
from granary.curate.textview import Spans, TextView, is_token_sep

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "●", "‣", "◦", "-", "*")


def _is_alpha(data: np.ndarray) -> np.ndarray:
    # any non-ASCII byte counts as part of a letter (scripts beyond Latin)
    low = data | 0x20
    return ((low >= 97) & (low <= 122)) | (data >= 128)


def _class_counts(view: TextView, spans: Spans, members: np.ndarray) -> np.ndarray:
    prefix = np.zeros(len(view.data) + 1, dtype=np.int64)
    np.cumsum(members.view(np.uint8), dtype=np.int64, out=prefix[1:])
    return prefix[spans.ends] - prefix[spans.starts]


class GopherQualityFilter(Step):
    """Drops documents failing any Gopher quality rule; the reason names the first rule failed."""

    config: GopherQualityConfig

    def process(self, batch: DocBatch) -> None:
        c, v = self.config, batch.view
        n = v.num_docs
        words = v.words
        symbol_only = _class_counts(v, words, is_token_sep(v.data)) == (words.ends - words.starts)
        n_words = words.per_doc(n, (~symbol_only).astype(np.float64))
        all_words = words.per_doc(n)
        mean_len = safe_ratio(words.per_doc(n, v.word_chars.astype(np.float64)), all_words)
        hashes = v.word_hashes if c.stop_words_case_sensitive else span_hashes(
            v.lower_data, words.starts, words.ends)
        stop = np.isin(hashes, _stop_hashes(c.stop_words))
        n_stop = words.per_doc(n, stop.astype(np.float64))
        symbols = count_in_docs(v, b"#") + count_in_docs(v, b"...") + count_in_docs(v, "…".encode())
        lines = v.nonempty_lines
        n_lines = lines.per_doc(n)
        bullet = lines.per_doc(n, starts_with_any(v, lines, c.bullets).astype(np.float64))
        ellipsis = lines.per_doc(n, ends_with_ellipsis(v, lines).astype(np.float64))
        alpha = words.per_doc(n, (_class_counts(v, words, _is_alpha(v.data)) > 0).astype(np.float64))
        rules = [
            (n_words < c.min_doc_words, "gopher_short_doc"),
            (n_words > c.max_doc_words, "gopher_long_doc"),
            ((mean_len < c.min_avg_word_length) | (mean_len > c.max_avg_word_length), "gopher_avg_word_length"),
            (safe_ratio(symbols, all_words) > c.max_symbol_word_ratio, "gopher_symbol_word_ratio"),
            (safe_ratio(bullet, n_lines) > c.max_bullet_lines_ratio, "gopher_bullet_lines"),
            (safe_ratio(ellipsis, n_lines) > c.max_ellipsis_lines_ratio, "gopher_ellipsis_lines"),
            (safe_ratio(alpha, all_words) < c.min_alpha_words_ratio, "gopher_alpha_words"),
            (n_stop < c.min_stop_words, "gopher_stop_words"),
        ]
        for mask, reason in rules:
            batch.drop(self.name, mask, reason)


_stop_cache: dict[tuple[str, ...], np.ndarray] = {}


def _stop_hashes(words: tuple[str, ...]) -> np.ndarray:
    if words not in _stop_cache:
        raw = "".join(words).encode()
        lens = np.array([len(w.encode()) for w in words], dtype=np.int64)
        ends = np.cumsum(lens)
        _stop_cache[words] = span_hashes(np.frombuffer(raw, np.uint8), ends - lens, ends)
    return _stop_cache[words]


@register_step("gopher_quality", GopherQualityFilter)
@dataclass(kw_only=True, frozen=True)
class GopherQualityConfig(StepConfig):
    """Gopher quality rules; defaults are the published thresholds (datatrove's defaults)."""

    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = STOP_WORDS
    stop_words_case_sensitive: bool = False
    bullets: tuple[str, ...] = BULLETS

    def __post_init__(self) -> None:
        if self.min_doc_words > self.max_doc_words:
            raise PipelineSpecError("gopher_quality", "min_doc_words > max_doc_words")
        if self.min_avg_word_length > self.max_avg_word_length:
            raise PipelineSpecError("gopher_quality", "min_avg_word_length > max_avg_word_length")
        for f in ("max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
                  "min_alpha_words_ratio"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise PipelineSpecError("gopher_quality", f"{f} must be in [0, 1], got {getattr(self, f)}")


def duplicate_stats(hashes: np.ndarray, doc: np.ndarray, chars: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Per document: number of elements that repeat an earlier element, and their characters."""
    if len(hashes) == 0:
        z = np.zeros(n)
        return z, z
    key = combine(hashes, doc.astype(np.uint64))
    _, first = np.unique(key, return_index=True)
    dup = np.ones(len(key), dtype=bool)
    dup[first] = False
    return (np.bincount(doc, weights=dup.astype(np.float64), minlength=n)[:n],
            np.bincount(doc, weights=np.where(dup, chars, 0).astype(np.float64), minlength=n)[:n])


def repeat_stats(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element: how many times its key occurs, and whether it is the first occurrence.

    A bincount over hash buckets finds the keys that can repeat; only those are sorted (a full sort of
    every key was 8x slower on natural text, where most word n-grams are unique).
    """
    n = len(key)
    count = np.ones(n, dtype=np.int64)
    first = np.ones(n, dtype=bool)
    if n < 2:
        return count, first
    size = 1 << max(10, (4 * n - 1).bit_length())
    bucket = (key & np.uint64(size - 1)).astype(np.intp)
    cand = np.flatnonzero(np.bincount(bucket, minlength=size)[bucket] >= 2)
    if len(cand) == 0:
        return count, first
    order = np.argsort(key[cand], kind="stable")
    sk = key[cand][order]
    new = np.empty(len(sk), dtype=bool)
    new[0] = True
    new[1:] = sk[1:] != sk[:-1]
    group = np.cumsum(new) - 1
    count[cand[order]] = np.bincount(group)[group]
    first[cand[order]] = new
    return count, first


def ngram_repeats(view: TextView, max_n: int) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For n = 1..max_n: (valid positions, count, first-occurrence) of each word n-gram within its document.

    Arrays are indexed by the n-gram's first word. An n-gram can repeat only where the (n-1)-grams at i and
    i+1 both repeat, so each longer n is hashed and counted only at those candidate positions.
    """
    w, h = view.words, view.word_hashes
    m = len(h)
    doc_u = w.doc.astype(np.uint64)
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    g = h.copy()
    count, first = repeat_stats(combine(g, doc_u))
    out[1] = (np.ones(m, dtype=bool), count, first)
    for k in range(2, max_n + 1):
        valid = np.zeros(m, dtype=bool)
        if m >= k:
            valid[: m - k + 1] = w.doc[: m - k + 1] == w.doc[k - 1 :]
        prev_count = out[k - 1][1]
        rep = np.zeros(m, dtype=bool)
        rep[: m - 1] = (prev_count[: m - 1] >= 2) & (prev_count[1:] >= 2)
        cand = np.flatnonzero(valid & rep)
        g[cand] = combine(g[cand], h[cand + k - 1])
        c_count, c_first = repeat_stats(combine(g[cand], doc_u[cand]))
        count = np.ones(m, dtype=np.int64)
        first = np.ones(m, dtype=bool)
        count[cand] = c_count
        first[cand] = c_first
        out[k] = (valid, count, first)
    return out


class GopherRepetitionFilter(Step):
    """Drops documents with repeated lines, paragraphs or n-grams above the Gopher thresholds."""

    config: GopherRepetitionConfig

    def process(self, batch: DocBatch) -> None:
        c, v = self.config, batch.view
        n = v.num_docs
        total = v.doc_chars.astype(np.float64)
        for spans, hashes, frac, char_frac, what in (
            (v.nonempty_lines, v.line_hashes, c.dup_line_frac, c.dup_line_char_frac, "line"),
            (v.paragraphs, None, c.dup_para_frac, c.dup_para_char_frac, "para"),
        ):
            if hashes is None:
                hashes = span_hashes(v.data, spans.starts, spans.ends)
            count, chars = duplicate_stats(hashes, spans.doc, v.chars(spans.starts, spans.ends), n)
            batch.drop(self.name, safe_ratio(count, spans.per_doc(n)) > frac, f"gopher_dup_{what}_frac")
            batch.drop(self.name, safe_ratio(chars, total) > char_frac, f"gopher_dup_{what}_char_frac")
        wchars = v.word_chars
        cum = np.zeros(len(wchars) + 1, np.int64)
        np.cumsum(wchars, out=cum[1:])
        max_n = max([k for k, _ in c.top_n_grams + c.dup_n_grams], default=0)
        grams = ngram_repeats(v, max_n) if max_n else {}
        pos = np.arange(len(wchars), dtype=np.int64)
        for k, thr in c.top_n_grams:
            valid, count, _ = grams[k]
            idx = pos[valid]
            span_chars = cum[idx + k] - cum[idx] + (k - 1)
            top = segment_max(count[idx] * span_chars, v.words.doc[idx], n)
            batch.drop(self.name, safe_ratio(top, total) > thr, f"gopher_top_{k}_gram")
        for k, thr in c.dup_n_grams:
            valid, _, first = grams[k]
            dup_at = np.flatnonzero(valid & ~first)
            cover = np.zeros(len(wchars) + 1, np.int64)
            np.add.at(cover, dup_at, 1)
            np.add.at(cover, dup_at + k, -1)
            covered = np.cumsum(cover[:-1]) > 0
            dup_chars = v.words.per_doc(n, np.where(covered, wchars, 0).astype(np.float64))
            batch.drop(self.name, safe_ratio(dup_chars, total) > thr, f"gopher_dup_{k}_gram")


@register_step("gopher_repetition", GopherRepetitionFilter)
@dataclass(kw_only=True, frozen=True)
class GopherRepetitionConfig(StepConfig):
    """Gopher repetition rules; defaults are the published thresholds."""

    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                                  (10, 0.10))

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_n_grams", tuple((int(k), float(t)) for k, t in self.top_n_grams))
        object.__setattr__(self, "dup_n_grams", tuple((int(k), float(t)) for k, t in self.dup_n_grams))
        for k, t in self.top_n_grams + self.dup_n_grams:
            if k < 1 or not 0.0 <= t <= 1.0:
                raise PipelineSpecError("gopher_repetition", f"bad n-gram rule ({k}, {t}): n >= 1, 0 <= t <= 1")
