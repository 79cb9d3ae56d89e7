"""Cleaners rewrite text as documented and never drop documents on their own."""

from __future__ import annotations

import pyarrow as pa
import pytest

import granary.curate.cleaners.text as T
from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch


def _run(cfg, texts: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    batch = DocBatch(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))
    cfg.build().process(batch)
    assert batch.num_alive == len(texts)
    return batch.table.column("text").to_pylist()


def test_unicode_and_control_characters() -> None:
    assert _run(T.UnicodeNormalizeConfig(form="NFKC"), ["ﬁne ①"]) == ["fine 1"]
    assert _run(T.UnicodeNormalizeConfig(), ["e\u0301"]) == ["\u00e9"]
    assert _run(T.ControlCharConfig(), ["a\x00b\x07c\u200bd\te\nf"]) == ["abcd\te\nf"]


def test_whitespace() -> None:
    got = _run(T.WhitespaceConfig(), ["  a \t b  \r\nc   \r\n\n\n\nd  "])
    assert got == ["a b\nc\n\nd"]
    assert _run(T.WhitespaceConfig(collapse_spaces=False), ["def f():\n    return 1\n"]) == [
        "def f():\n    return 1"]


def test_html_and_markdown() -> None:
    assert _run(T.HtmlStripConfig(), ["<p>Fish &amp; chips</p><script>x()</script><br>ok"]) == [
        "\nFish & chips\n\nok"]
    md = "---\ntitle: t\n---\n# Title\nSee [the docs](http://x) and **bold** `code`.\n![alt](img.png)"
    assert _run(T.MarkdownStripConfig(), [md]) == ["Title\nSee the docs and bold code.\nalt"]


def test_boilerplate_patterns_and_validation() -> None:
    got = _run(T.BoilerplatePatternConfig(), ["Story text.\nShare this\nMore text.\n(c) 2020 All Rights Reserved"])
    assert got == ["Story text.\nMore text.\n"]
    with pytest.raises(PipelineSpecError, match="bad regex"):
        T.BoilerplatePatternConfig(patterns=("(unclosed",))


def test_length_filter_drops_emptied_documents() -> None:
    batch = DocBatch(pa.table({"id": ["a", "b"], "text": ["<p></p>", "<p>kept</p>"]}))
    T.HtmlStripConfig().build().process(batch)
    T.WhitespaceConfig().build().process(batch)
    T.LengthConfig(min_chars=1).build().process(batch)
    assert batch.rejected().column("reason").to_pylist() == ["too_short"]


def test_repeated_lines_are_found_across_shards_and_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from granary.curate.cleaners.repeated import RepeatedLinesConfig

    footer = "Copyright Example Corp. Terms apply."
    texts = [f"Story number {i} is about the sea.\n\n{footer}\n  short  " for i in range(30)] + ["Unique text only."]
    tables = [pa.table({"id": [str(i) for i in range(k, k + 10)], "text": texts[k : k + 10]}) for k in (0, 10, 20)]
    tables.append(pa.table({"id": ["30"], "text": texts[30:]}))
    step = RepeatedLinesConfig(min_docs=5, min_fraction=0.1, memory_limit_bytes=64).build()
    batches = [DocBatch(t) for t in tables]
    paths = []
    for i, b in enumerate(batches):
        np.savez(tmp_path / f"{i}.npz", **step.collect(b))  # type: ignore[attr-defined]
        paths.append(tmp_path / f"{i}.npz")
    for b, d in zip(batches, step.decide(paths, tmp_path), strict=True):  # type: ignore[attr-defined]
        step.apply(b, dict(np.load(d)))  # type: ignore[attr-defined]
    out = [t for b in batches for t in b.table.column("text").to_pylist()]
    assert out[0] == "Story number 0 is about the sea.\n\n  short  "
    assert out[30] == "Unique text only."
    assert step.summary(tmp_path)["boilerplate_lines"] == 1  # type: ignore[attr-defined]
    assert step.take_counters() == {"lines_removed": 30}  # type: ignore[attr-defined]
