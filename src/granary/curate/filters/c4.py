"""C4 quality filter (Raffel et al. 2020): line-level cleanup plus document rules, vectorised."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch, Step, StepConfig, register_step
from granary.curate.textops import (
    count_in_docs,
    ends_with_terminal,
    find_all,
    gather_spans,
    safe_ratio,
    spans_containing,
    words_per_span,
)
from granary.curate.textview import Spans, TextView, is_token_sep, split_spans

POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")
CITATION_RE = r"\[\d*\]|\[edit\]|\[citation needed\]"
DEFAULT_BAD_WORDS = ()  # the LDNOOBW list is not shipped; pass your own `bad_words`


class C4QualityFilter(Step):
    """Keeps only C4-style lines (terminal punctuation, >= 3 words, no javascript/policy), then applies the
    document rules (lorem ipsum, curly braces, minimum sentences, optional bad words)."""

    config: C4QualityConfig

    def process(self, batch: DocBatch) -> None:
        c = self.config
        if c.remove_citations:
            batch.set_text(pc.replace_substring_regex(batch.table.column(batch.text_column), CITATION_RE, ""))
        v = batch.view
        n = v.num_docs
        if c.filter_lorem_ipsum:
            batch.drop(self.name, count_in_docs(v, b"lorem ipsum", lower=True) > 0, "c4_lorem_ipsum")
        if c.filter_curly_bracket:
            batch.drop(self.name, count_in_docs(v, b"{") > 0, "c4_curly_bracket")
        if c.bad_words:
            bad = np.zeros(n, dtype=bool)
            for w in c.bad_words:
                bad |= _whole_word_hits(v, w.lower().encode()) > 0
            batch.drop(self.name, bad, "c4_bad_words")
        lines = v.nonempty_lines
        keep = np.ones(len(lines), dtype=bool)
        if c.filter_no_terminal_punct:
            keep &= ends_with_terminal(v, lines, exclude_ellipsis=True)
        keep &= words_per_span(v.words, lines) >= c.min_words_per_line
        if c.max_word_length > 0:
            long_word = v.words.select(v.word_chars > c.max_word_length)
            keep &= ~spans_containing(lines, long_word.starts, 1)
        if c.filter_javascript:
            keep &= ~spans_containing(lines, find_all(v.lower_data, b"javascript"), 10)
        if c.filter_policy:
            for p in POLICY_PHRASES:
                keep &= ~spans_containing(lines, find_all(v.lower_data, p.encode()), len(p))
        kept = lines.select(keep)
        sentences = _sentences_per_doc(v, kept, n)
        batch.drop(self.name, sentences < c.min_num_sentences, "c4_min_sentences")
        if not keep.all():
            batch.set_text(gather_spans(v, kept))


def _sentences_per_doc(v: TextView, kept: Spans, n: int) -> np.ndarray:
    """Terminal punctuation followed by whitespace or a line end, inside kept lines."""
    ends = np.zeros(0, np.int64)
    for b in (b".", b"!", b"?"):
        ends = np.concatenate([ends, find_all(v.data, b)])
    if len(ends) == 0:
        return np.zeros(n)
    nxt = np.minimum(ends + 1, len(v.data) - 1)
    follow = (ends + 1 >= len(v.data)) | np.isin(v.data[nxt], np.frombuffer(b" \t\n\r", np.uint8))
    k = np.searchsorted(kept.starts, ends, side="right") - 1
    ok = (k >= 0) & (ends < kept.ends[np.maximum(k, 0)])
    ok &= follow | (ends + 1 == kept.ends[np.maximum(k, 0)])
    return np.bincount(kept.doc[k[ok]], minlength=n)[:n].astype(np.float64)


def _whole_word_hits(v: TextView, word: bytes) -> np.ndarray:
    pos = find_all(v.lower_data, word)
    if len(pos) == 0:
        return np.zeros(v.num_docs)
    tokens = split_spans(v.data, v.offsets, is_token_sep)
    k = np.searchsorted(tokens.starts, pos, side="left")
    k = np.minimum(k, len(tokens.starts) - 1)
    exact = (tokens.starts[k] == pos) & (tokens.ends[k] == pos + len(word))
    return np.bincount(tokens.doc[k[exact]], minlength=v.num_docs)[: v.num_docs]


@register_step("c4_quality", C4QualityFilter)
@dataclass(kw_only=True, frozen=True)
class C4QualityConfig(StepConfig):
    """C4 rules; defaults follow the C4 paper and datatrove's C4QualityFilter."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    bad_words: tuple[str, ...] = DEFAULT_BAD_WORDS

    def __post_init__(self) -> None:
        if self.min_num_sentences < 0 or self.min_words_per_line < 0:
            raise PipelineSpecError("c4_quality", "min_num_sentences and min_words_per_line must be >= 0")
        for w in self.bad_words:
            if not w or re.search(r"\s", w):
                raise PipelineSpecError("c4_quality", f"bad_words entries must be single words, got {w!r}")


class FineWebQualityFilter(Step):
    """FineWeb's line rules: punctuated-line ratio, short-line ratio, duplicated-line characters, list ratio."""

    config: FineWebQualityConfig

    def process(self, batch: DocBatch) -> None:
        from granary.curate.filters.gopher import duplicate_stats

        c, v = self.config, batch.view
        n = v.num_docs
        lines = v.nonempty_lines
        n_lines = lines.per_doc(n)
        batch.drop(self.name, n_lines == 0, "fineweb_empty")
        punct = safe_ratio(lines.per_doc(n, ends_with_terminal(v, lines).astype(np.float64)), n_lines)
        bad_punct = punct <= c.line_punct_thr
        if c.line_punct_exclude_zero:
            bad_punct &= punct > 0
        batch.drop(self.name, bad_punct, "fineweb_line_punct_ratio")
        lchars = v.chars(lines.starts, lines.ends)
        short = safe_ratio(lines.per_doc(n, (lchars <= c.short_line_length).astype(np.float64)), n_lines)
        batch.drop(self.name, short >= c.short_line_thr, "fineweb_short_line_ratio")
        _, dup_chars = duplicate_stats(v.line_hashes, lines.doc, lchars, n)
        newlines = count_in_docs(v, b"\n")
        ratio = safe_ratio(dup_chars, v.doc_chars - newlines)
        batch.drop(self.name, ratio >= c.char_duplicates_ratio, "fineweb_char_dup_ratio")
        batch.drop(self.name, safe_ratio(newlines, v.words.per_doc(n)) > c.new_line_ratio, "fineweb_list_ratio")


@register_step("fineweb_quality", FineWebQualityFilter)
@dataclass(kw_only=True, frozen=True)
class FineWebQualityConfig(StepConfig):
    """FineWeb rules; defaults are the FineWeb release thresholds."""

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def __post_init__(self) -> None:
        for f in ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise PipelineSpecError("fineweb_quality", f"{f} must be in [0, 1], got {getattr(self, f)}")
        if self.short_line_length < 1:
            raise PipelineSpecError("fineweb_quality", "short_line_length must be >= 1")
