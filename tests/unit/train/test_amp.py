"""fp16 with a dynamic loss scale (torch.amp.GradScaler) in one process on CPU: overflowing steps are skipped and
the scale backs off, and the scaler's state round-trips through a checkpoint so a resumed run is bit-identical."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from granary.train.metrics import read_metrics
from tests.integration.train.helpers import final_state
from tests.unit.train.test_trainer import _fail_at, recipe

torch = pytest.importorskip("torch")

# 2**24 x a loss of ~5.5 overflows fp16 (max 65504) in the backward pass: the first steps are skipped while the
# scale halves, then it trains; a growth interval of 3 makes the scale also grow within the run.
FP16 = {"mixed_precision": "fp16", "fp16_init_scale": 2.0**24, "fp16_growth_interval": 3}


def _records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


def test_fp16_skips_overflowing_steps_and_resumes_exactly(home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.train import fit

    base = fit(recipe(tmp_path, "base16", steps=12, parallel=FP16))
    assert base.steps == 12
    recs = _records(tmp_path / "base16")
    scales = [r["loss_scale"] for r in recs]
    skipped = [r["skipped_steps"] for r in recs]
    assert scales[0] == 2.0**23 and skipped[0] == 1  # step 1 overflowed: no update, scale halved
    assert skipped[-1] >= 2 and skipped[-1] < 12
    assert any(b == 2 * a for a, b in itertools.pairwise(scales))  # it grows after 3 clean steps
    assert recs[-1]["loss"] < recs[skipped[-1]]["loss"]  # it learns once the scale fits
    state = final_state(home, "base16-ckpt")
    assert state["scaler"]["scale"] == scales[-1] and state["scaler"]["skipped"] == skipped[-1]

    with monkeypatch.context() as m:
        _fail_at(m, "step", 6)  # last checkpoint at step 4, mid back-off/growth
        with pytest.raises(RuntimeError, match="injected"):
            fit(recipe(tmp_path, "again16", steps=12, parallel=FP16))
    again = fit(recipe(tmp_path, "again16", steps=12, parallel=FP16))
    assert again.resumed_from == 4
    assert [(r["loss"], r["loss_scale"]) for r in _records(tmp_path / "again16")[-8:]] == \
        [(r["loss"], r["loss_scale"]) for r in recs[-8:]]
    other = final_state(home, "again16-ckpt")
    for k in state["model"]:
        assert torch.equal(state["model"][k], other["model"][k]), k
    assert other["scaler"] == state["scaler"]


def test_fp16_refused_with_pipeline_parallel(tmp_path: Path) -> None:
    from granary.errors import TrainError
    from granary.train.amp import LossScaler
    from granary.train.dist import Dist

    r = recipe(tmp_path, "pp16", parallel={"mode": "pp", "mixed_precision": "fp16"})
    with pytest.raises(TrainError, match=r"not available with parallel\.mode pp"):
        LossScaler(r.parallel, "pp", Dist(), "cpu")
    assert not LossScaler(recipe(tmp_path, "x").parallel, "single", Dist(), "cpu").enabled
