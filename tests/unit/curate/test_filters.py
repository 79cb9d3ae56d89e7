"""Gopher, C4 and FineWeb filters: each rule fires on its own failure mode, good prose passes, and the
vectorised metrics agree with straightforward Python implementations of the published rules."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from granary.curate.errors import PipelineSpecError
from granary.curate.filters.c4 import C4QualityConfig, FineWebQualityConfig
from granary.curate.filters.gopher import GopherQualityConfig, GopherRepetitionConfig, ngram_repeats
from granary.curate.step import DocBatch
from granary.curate.synth import Truth
from granary.curate.textview import TextView

GOOD = ("The river runs past the old mill and the village that grew around it. "
        "People come to see the water wheel, which still turns with the current. "
        "Children play near the bank while their parents talk with the miller. "
        "In spring the meadow is full of flowers and the air smells of rain. "
        "Visitors often stay for lunch at the small inn beside the bridge.")


def _reasons(cfg, texts: list[str]) -> list[str | None]:  # type: ignore[no-untyped-def]
    batch = DocBatch(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    cfg.build().process(batch)
    out: list[str | None] = [None] * len(texts)
    for row in batch.rejected().to_pylist():
        out[int(row["id"])] = row["reason"]
    return out


def test_gopher_quality_rules_fire_on_their_failure() -> None:
    texts = [GOOD, "too short for gopher", "# " * 10 + GOOD, "\n".join(["- item " + GOOD[:40]] * 20),
             "1234 5678 9012 " * 30, " ".join(["hippopotamus"] * 60) + " the and"]
    got = _reasons(GopherQualityConfig(), texts)
    assert got[0] is None
    assert got[1] == "gopher_short_doc"
    assert got[2] == "gopher_symbol_word_ratio"
    assert got[3] == "gopher_bullet_lines"
    assert got[4] == "gopher_alpha_words"
    assert got[5] == "gopher_avg_word_length"


def test_thresholds_are_configurable_and_validated() -> None:
    assert _reasons(GopherQualityConfig(min_doc_words=3), ["too short for gopher words the and"]) == [None]
    with pytest.raises(PipelineSpecError, match="min_doc_words"):
        GopherQualityConfig(min_doc_words=10, max_doc_words=5)
    with pytest.raises(PipelineSpecError, match="line_punct_thr"):
        FineWebQualityConfig(line_punct_thr=2.0)


def test_gopher_repetition_catches_repeated_lines_and_ngrams() -> None:
    rep_lines = "\n".join(["the same line comes back again."] * 10 + [GOOD])
    rep_ngrams = " ".join(["alpha beta gamma delta epsilon zeta"] * 30)
    got = _reasons(GopherRepetitionConfig(), [GOOD, rep_lines, rep_ngrams])
    assert got[0] is None
    assert got[1] == "gopher_dup_line_frac"
    assert got[2] is not None and got[2].startswith("gopher_")


def _py_ngram_counts(words: list[str], n: int) -> tuple[int, int]:
    """Reference: the top n-gram's occurrences, and how many n-gram positions repeat an earlier one."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    c = Counter(grams)
    seen: set[tuple[str, ...]] = set()
    dup = 0
    for g in grams:
        dup += g in seen
        seen.add(g)
    return (max(c.values()) if c else 0), dup


def test_ngram_repeats_match_python_counter(corpus: tuple[list[dict[str, str]], Truth]) -> None:
    docs = [d["text"] for d in corpus[0][:300]]
    view = TextView(pa.array(docs))
    grams = ngram_repeats(view, 6)
    doc = view.words.doc
    for n in (2, 3, 5, 6):
        valid, count, first = grams[n]
        for i in (0, 7, 42, 101):
            sel = np.flatnonzero(valid & (doc == i))
            top, dup = _py_ngram_counts(docs[i].split(), n)
            assert (count[sel].max() if len(sel) else 0) == top
            assert int((~first[sel]).sum()) == dup


def test_c4_drops_documents_and_removes_lines() -> None:
    nav = "Home | About | Contact\n"
    policy = "Read our privacy policy before you continue.\n"
    got_batch = DocBatch(pa.table({"id": ["0", "1", "2", "3"], "text": [
        nav + GOOD.replace(". ", ".\n") + "\n" + policy, "Lorem ipsum dolor sit amet. " + GOOD,
        GOOD + " function() { return 1; }", "One sentence only here."]}))
    C4QualityConfig().build().process(got_batch)
    reasons = {r["id"]: r["reason"] for r in got_batch.rejected().to_pylist()}
    assert reasons == {"1": "c4_lorem_ipsum", "2": "c4_curly_bracket", "3": "c4_min_sentences"}
    got_batch.compact()
    text = got_batch.table.column("text")[0].as_py()
    assert "Home | About" not in text and "privacy policy" not in text and text.startswith("The river runs")


def test_fineweb_rules() -> None:
    list_like = "\n".join(f"item {i}" for i in range(40))
    no_punct = "\n".join(["a line of words without an ending"] * 3 + ["another one here and there"] * 3)
    dup_lines = GOOD.replace(". ", ".\n") + "\n" + "Visitors often stay for lunch at the small inn beside the bridge."
    got = _reasons(FineWebQualityConfig(), [GOOD, list_like, no_punct, dup_lines])
    assert got[0] is None
    assert got[1] in ("fineweb_line_punct_ratio", "fineweb_short_line_ratio")
    assert got[2] == "fineweb_line_punct_ratio"
    assert got[3] == "fineweb_char_dup_ratio"


def test_filters_catch_planted_low_quality_and_spare_clean(corpus: tuple[list[dict[str, str]], Truth]) -> None:
    docs, truth = corpus
    batch = DocBatch(pa.Table.from_pylist(docs))
    for cfg in (GopherRepetitionConfig(), GopherQualityConfig(), C4QualityConfig(filter_no_terminal_punct=False),
                FineWebQualityConfig()):
        cfg.build().process(batch)
    dropped = {int(r["id"][4:]) for r in batch.rejected().to_pylist()}
    low = {i for i, k in enumerate(truth.kind) if k.startswith("low_quality")}
    clean = set(truth.indices("clean"))
    assert len(low & dropped) / len(low) >= 0.98
    assert len(clean & dropped) / len(clean) <= 0.01
