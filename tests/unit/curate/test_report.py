"""Reports: every section computed from the tables; the HTML page is self-contained and has charts."""

from __future__ import annotations

import re

import pyarrow as pa

from granary.curate.report import render_html, report_from_tables
from granary.curate.synth import Truth


def test_report_sections(corpus: tuple[list[dict[str, str]], Truth]) -> None:
    docs, truth = corpus
    table = pa.Table.from_pylist(docs[:1500])
    rejected = pa.table({"id": ["x1", "x2", "x3"], "text": ["a", "b", "c"], "step": ["gq", "gq", "exact"],
                         "reason": ["gopher_short_doc", "gopher_short_doc", "exact_duplicate_of:d1"]})
    quarantine = pa.table({"source": ["f.jsonl"], "line": [3], "reason": ["invalid JSON: x"], "raw": [b"{"]})
    lineage = {"steps": {"pii": {"docs_in": 5, "docs_out": 5, "counters": {"pii_EMAIL": 4}}}}
    rep = report_from_tables(table, rejected=rejected, quarantine=quarantine, lineage=lineage, name="t")
    planted_exact = sum(1 for i in truth.indices("exact_dup") if i < 1500)
    assert rep["documents"] == 1500
    assert abs(rep["duplicates"]["exact_duplicates"] - planted_exact) <= 2
    assert rep["duplicates"]["near_duplicates"] >= sum(1 for i in truth.indices("near_dup") if i < 1500) * 0.9
    assert rep["completeness"]["text"] == {"nulls": 0, "empty": 0}
    assert set(rep["sources"]) == {"web", "books", "forums"}
    assert rep["drops"][0]["reason"] == "gopher_short_doc" and rep["drops"][0]["count"] == 2
    assert rep["pii"]["counts"] == {"EMAIL": 4}
    assert rep["quarantine"]["count"] == 1
    assert rep["lengths"]["chars"]["p50"] > 100
    page = render_html(rep)
    assert page.count("<svg") >= 4 and "gopher_short_doc" in page
    assert not re.search(r"(src|href)=['\"]https?://", page)


def test_report_scans_pii_and_languages_without_lineage() -> None:
    table = pa.table({"id": ["a", "b"], "text": ["Write to anna@example.org about the weather in the town.",
                                                 "Der Hund läuft schnell über die Straße und bellt laut."]})
    rep = report_from_tables(table)
    assert rep["pii"]["counts"] == {"EMAIL": 1}
    assert rep["languages"]["counts"] == {"de": 1, "en": 1}
