"""Language identification: offline model, a language column, keep/drop by language and confidence."""

from __future__ import annotations

import pyarrow as pa

from granary.curate.filters.langid import LanguageConfig
from granary.curate.step import DocBatch


def test_language_column_and_filter() -> None:
    texts = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.",
             "   "]
    batch = DocBatch(pa.table({"id": ["en", "fr", "blank"], "text": texts}))
    LanguageConfig(languages=("en",), min_score=0.5).build().process(batch)
    assert batch.table.column("lang").to_pylist() == ["en", "fr", "und"]
    assert batch.table.column("lang_score")[0].as_py() > 0.9
    assert {r["id"]: r["reason"] for r in batch.rejected().to_pylist()} == {"fr": "lang_fr", "blank": "lang_und"}


def test_keep_all_languages_with_empty_list() -> None:
    batch = DocBatch(pa.table({"id": ["fr"], "text": ["Le chien dort dans la maison pendant la journée."]}))
    LanguageConfig(languages=(), min_score=0.0).build().process(batch)
    assert batch.num_alive == 1 and batch.table.column("lang").to_pylist() == ["fr"]
