"""Recipes: YAML mapped onto the frozen dataclasses; bad input names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.errors import TrainError
from granary.train.recipe import ParallelConfig, Recipe, load_recipe, recipe_from_dict

GOOD = """\
name: demo
steps: 20
data:
  dataset: web-tok
  batch_size: 8
model:
  d_model: 64
  n_heads: 4
parallel:
  mode: fsdp
  mixed_precision: bf16
"""


def test_yaml_maps_onto_dataclasses(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.steps == 20 and r.data.batch_size == 8 and r.model.d_model == 64
    assert r.parallel == ParallelConfig(mode="fsdp", mixed_precision="bf16")
    assert r.optim.lr == 1e-3  # defaults fill the rest
    assert r.checkpoint_dataset == "demo-ckpt"
    with pytest.raises(AttributeError):
        r.steps = 3  # type: ignore[misc]  # frozen
    with pytest.raises(TypeError):
        Recipe("x", None)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("  batch_size: 8", "  batchsize: 8"), r"r.yaml:5: unknown field 'data.batchsize'"),
    (GOOD.replace("steps: 20", "steps: twenty"), r"r.yaml:2: field 'steps' must be int, got 'twenty'"),
    (GOOD.replace("mode: fsdp", "mode: zero3"), r"r.yaml:10: field 'parallel.mode' is 'zero3'; allowed: ddp"),
    (GOOD.replace("  dataset: web-tok\n", ""), r"missing required field 'data.dataset'"),
    ("name: a\ndata: 3\n", r"r.yaml:2: data must be a mapping"),
    (GOOD.replace("  n_heads: 4", "  n_heads: 5"), r"model.d_model has a bad value"),
    ("name: [unclosed", r"not valid YAML"),
])
def test_bad_recipes_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(TrainError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_recipe(path)


def test_unknown_field_hint_lists_known_fields() -> None:
    with pytest.raises(TrainError) as info:
        recipe_from_dict({"name": "a", "data": {"dataset": "x"}, "optim": {"learning_rate": 1}})
    assert "lr" in (info.value.hint or "") and "'optim.learning_rate'" in str(info.value)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_model_hash_changes_with_shape() -> None:
    a = recipe_from_dict({"name": "a", "data": {"dataset": "x"}})
    b = recipe_from_dict({"name": "a", "data": {"dataset": "x"}, "model": {"n_layers": 3}})
    c = recipe_from_dict({"name": "b", "data": {"dataset": "y"}, "steps": 5})
    assert a.model_hash() != b.model_hash() and a.model_hash() == c.model_hash()


def test_import_granary_train_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, granary.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
