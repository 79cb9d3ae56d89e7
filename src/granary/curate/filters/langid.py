"""Language identification with py3langid (model shipped inside the PyPI package; nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch, Step, StepConfig, register_step
from granary.errors import MissingDependencyError


@lru_cache(maxsize=1)
def _identifier() -> Any:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("py3langid", "curate") from exc
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_languages(texts: list[str], *, max_chars: int) -> tuple[list[str], np.ndarray]:
    """Language code and confidence of each text, judged on its first `max_chars` characters."""
    ident = _identifier()
    langs: list[str] = []
    scores = np.zeros(len(texts), dtype=np.float64)
    # The model is a per-document byte DFA walk inside py3langid; this loop only calls it (one call per doc).
    for i, t in enumerate(texts):
        if not t or not t.strip():
            langs.append("und")
            continue
        lang, conf = ident.classify(t[:max_chars])
        langs.append(lang)
        scores[i] = conf
    return langs, scores


class LanguageFilter(Step):
    """Adds `lang` and `lang_score` columns; drops documents outside `languages` or under `min_score`."""

    config: LanguageConfig

    def process(self, batch: DocBatch) -> None:
        c = self.config
        texts = batch.table.column(batch.text_column).to_pylist()
        alive = batch.alive
        langs = ["und"] * len(texts)
        scores = np.zeros(len(texts))
        idx = np.flatnonzero(alive)
        got, sc = detect_languages([texts[i] for i in idx], max_chars=c.max_chars)
        for j, i in enumerate(idx):
            langs[i] = got[j]
        scores[idx] = sc
        batch.set_column(c.column, pa.array(langs, pa.string()))
        batch.set_column(c.column + "_score", pa.array(scores, pa.float32()))
        if c.languages:
            wrong = ~np.isin(np.array(langs, dtype=object), list(c.languages))
            reasons = np.array([f"lang_{x}" for x in langs], dtype=object)
            batch.drop(self.name, wrong, reasons)
        batch.drop(self.name, scores < c.min_score, "lang_low_confidence")


@register_step("language", LanguageFilter)
@dataclass(kw_only=True, frozen=True)
class LanguageConfig(StepConfig):
    """Keep languages (ISO 639-1 codes; empty keeps all) with confidence >= min_score."""

    languages: tuple[str, ...] = ("en",)
    min_score: float = 0.65
    max_chars: int = 500
    column: str = "lang"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise PipelineSpecError("language", f"min_score must be in [0, 1], got {self.min_score}")
        if self.max_chars < 16:
            raise PipelineSpecError("language", "max_chars must be >= 16")
