"""A resume with more than two ranks is bit-identical too: with three or more, gloo's all-reduce adds each element's
contributions in an order set by the gradient bucket layout, which DDP changes after its first backward; a resumed
run must reach the same layout before its first step (see :func:`granary.train.parallel.settle_ddp_buckets`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.train.helpers import check, final_state, losses, make_tokens, run_train, write_recipe

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_three_rank_run_killed_after_a_checkpoint_matches_the_uninterrupted_one(tmp_path: Path) -> None:
    import torch

    home = tmp_path / "home"
    make_tokens(home)
    base = write_recipe(tmp_path / "base.yaml", "base3", steps=8)
    check(run_train(home, base, "--nproc-per-node", "3"))
    killed = write_recipe(tmp_path / "killed.yaml", "killed3", steps=8)
    check(run_train(home, killed, "--nproc-per-node", "3", "--max-restarts", "2",
                    env={"GRANARY_TRAIN_CHAOS": "kill:2:6"}))
    base_losses, _ = losses(tmp_path / "base3")
    killed_losses, records = losses(tmp_path / "killed3")
    assert sorted({r[2] for r in records}) == [0, 1]  # it was killed once and resumed (from step 4)
    assert killed_losses == base_losses
    a, b = final_state(home, "base3-ckpt"), final_state(home, "killed3-ckpt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs after the resume"
