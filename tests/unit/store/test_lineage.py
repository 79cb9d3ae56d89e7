"""The sources a lineage record names (what derived data inherits restrictions from)."""

from __future__ import annotations

from granary.store.lineage import lineage_sources

VID = "a" * 64


def test_tokenize_curate_and_transform_lineages() -> None:
    assert lineage_sources({"command": "tokenize", "inputs": [VID], "source": "web@main"}) == ([VID], [])
    curate = {"command": "granary curate", "input": {"input": "web@main", "input_version": VID,
                                                     "input_dataset": "web"}}
    assert lineage_sources(curate) == ([VID], ["web"])
    assert lineage_sources({"sources": ["a@main", "b"]}) == ([], ["a", "b"])


def test_junk_is_ignored() -> None:
    assert lineage_sources({}) == ([], [])
    assert lineage_sources({"inputs": ["short", 3, None, "z" * 64], "input": "files/"}) == ([], [])
