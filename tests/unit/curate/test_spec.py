"""Pipeline specs: YAML maps onto the step dataclasses, errors name the place, segments split at global steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from granary.curate import PipelineSpec, all_steps
from granary.curate.errors import PipelineSpecError

REPO = Path(__file__).resolve().parents[3]


def test_yaml_round_trip_and_segments(tmp_path: Path) -> None:
    text = """
name: t
steps:
  - normalize_unicode
  - step: gopher_repetition
    top_n_grams: [[2, 0.25]]
  - step: exact_dedup
  - step: pii
    kinds: [EMAIL]
"""
    p = tmp_path / "p.yaml"
    p.write_text(text)
    spec = PipelineSpec.from_yaml(p)
    assert spec.steps[1].top_n_grams == ((2, 0.25),)  # type: ignore[attr-defined]
    assert spec.steps[3].kinds == ("EMAIL",)  # type: ignore[attr-defined]
    assert [len(s.local) for s in spec.segments()] == [2, 1]
    assert spec.segments()[0].boundary is not None and spec.segments()[0].boundary.name == "exact_dedup"
    again = PipelineSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert again == spec


@pytest.mark.parametrize(("doc", "match"), [
    ({"steps": [{"step": "nope"}]}, "unknown step 'nope'"),
    ({"steps": [{"step": "gopher_quality", "min_words": 3}]}, r"steps\[0\] \(gopher_quality\): unknown options"),
    ({"steps": [{"step": "gopher_quality", "max_symbol_word_ratio": 3}]}, "must be in"),
    ({"steps": []}, "at least one step"),
    ({"steps": ["exact_dedup", "exact_dedup"]}, "step names repeat"),
    ({"steps": ["pii"], "extra": 1}, "unknown keys"),
])
def test_errors_name_the_place(doc: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(PipelineSpecError, match=match):
        PipelineSpec.from_dict(doc)


def test_bad_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("steps: [unclosed\n")
    with pytest.raises(PipelineSpecError, match="not valid YAML"):
        PipelineSpec.from_yaml(p)


@pytest.mark.parametrize("path", ["examples/pipelines/fineweb.yaml", "examples/pipelines/code-docs.yaml",
                                  "src/granary/curate/pipelines/demo.yaml"])
def test_shipped_pipelines_load(path: str) -> None:
    spec = PipelineSpec.from_yaml(REPO / path)
    assert {s.name for s in spec.steps} >= {"exact_dedup", "minhash_dedup", "pii"}


def test_registry_lists_every_step() -> None:
    assert set(all_steps()) == {
        "normalize_unicode", "remove_control_chars", "normalize_whitespace", "strip_html", "strip_markdown",
        "boilerplate_patterns", "length", "gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality",
        "language", "exact_dedup", "minhash_dedup", "pii", "balance", "repeated_lines"}
