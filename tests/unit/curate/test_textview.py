"""The shared split: words, lines, paragraphs and hashes match plain-Python references."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.curate.hashing import span_hashes, string_buffers
from granary.curate.textview import TextView

ascii_text = st.text(alphabet=st.sampled_from(list("ab cd\n\t.,!xy Z\r")), max_size=60)


def _spans(view: TextView, spans) -> list[list[str]]:  # type: ignore[no-untyped-def]
    data = view.data.tobytes()
    out: list[list[str]] = [[] for _ in range(view.num_docs)]
    for s, e, d in zip(spans.starts, spans.ends, spans.doc, strict=True):
        out[d].append(data[s:e].decode())
    return out


@given(st.lists(ascii_text, max_size=8))
@settings(max_examples=150, deadline=None)
def test_words_and_lines_match_python(texts: list[str]) -> None:
    view = TextView(pa.array(texts, pa.string()))
    assert _spans(view, view.words) == [t.split() for t in texts]
    expected_lines = []
    for t in texts:
        lines = t.split("\n") if t else []
        if t.endswith("\n"):
            lines = lines[:-1]
        expected_lines.append(lines)
    assert _spans(view, view.lines) == expected_lines
    stripped = [[ln.strip(" \t\r\x0b\x0c") for ln in lines if ln.strip(" \t\r\x0b\x0c")] for lines in expected_lines]
    assert _spans(view, view.nonempty_lines) == stripped


def test_paragraphs_nulls_and_unicode_chars() -> None:
    view = TextView(pa.array(["a b\nc\n\n\nd e", None, "héllo wörld"]))
    assert _spans(view, view.paragraphs) == [["a b\nc", "d e"], [], ["héllo wörld"]]
    assert view.doc_chars.tolist() == [11, 0, 11]
    assert view.word_chars.tolist() == [1, 1, 1, 1, 1, 5, 5]


@given(st.lists(st.text(max_size=30), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_equal_strings_hash_equal_and_distinct_differ(texts: list[str]) -> None:
    offsets, data = string_buffers(pa.array(texts))
    h = span_hashes(data, offsets[:-1], offsets[1:])
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert (h[i] == h[j]) == (texts[i].encode() == texts[j].encode())


def test_hashes_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(97, 123, 5_000_000).astype(np.uint8)
    starts = np.arange(0, len(data) - 20, 7)
    a = span_hashes(data, starts, starts + 5)
    b = span_hashes(data.copy(), starts[::-1].copy()[::-1], starts + 5)
    # the same span content at a different offset must hash the same
    shifted = span_hashes(np.concatenate([np.zeros(3, np.uint8), data]), starts + 3, starts + 8)
    assert np.array_equal(a, b) and np.array_equal(a, shifted)


def test_sliced_arrays_see_only_their_rows() -> None:
    arr = pa.array(["one two", "three four five", "six", "seven eight"])
    part = arr.slice(1, 2)
    view = TextView(part)
    assert _spans(view, view.words) == [["three", "four", "five"], ["six"]]
    assert view.doc_bytes.tolist() == [15, 3]
