"""Fixtures for curation unit tests: a small labelled synthetic corpus."""

from __future__ import annotations

import pyarrow as pa
import pytest

from granary.curate.synth import Truth, generate


@pytest.fixture(scope="session")
def corpus() -> tuple[list[dict[str, str]], Truth]:
    """3,000 labelled documents (planted duplicates, low quality, PII, decoys)."""
    return generate(3000, seed=11)


@pytest.fixture(scope="session")
def corpus_table(corpus: tuple[list[dict[str, str]], Truth]) -> pa.Table:
    """The corpus as an Arrow table (id, text, source)."""
    return pa.Table.from_pylist(corpus[0])
