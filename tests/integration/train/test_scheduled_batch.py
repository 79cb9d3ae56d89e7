"""The global batch size the scheduler chose reaches the trainer (GRANARY_GLOBAL_BATCH_SIZE), split over the ranks,
and a run whose batch changes between attempts still consumes the stream exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from granary.config import Settings
from granary.store import open_store
from granary.train.lineage import checkpoint_lineage
from tests.integration.sched.test_elastic_resize import _exact
from tests.integration.train.helpers import check, make_tokens, run_train, write_recipe

pytest.importorskip("torch")


def test_batch_chosen_by_the_scheduler_changes_between_attempts_exactly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_tokens(home)
    recipe = tmp_path / "r.yaml"
    write_recipe(recipe, "r", steps=6, every=3)  # the recipe says 4 per rank
    report = tmp_path / "report.json"  # what the scheduler's agent reads
    check(run_train(home, recipe, "--nproc-per-node", "2", env={"GRANARY_GLOBAL_BATCH_SIZE": "12",
                                                                "GRANARY_REPORT_FILE": str(report)}))
    reported = json.loads(report.read_text())
    assert reported["local_batch"] == 6.0 and reported["world_size"] == 2
    assert reported["run_dir"] == str(tmp_path / "r")
    assert 0 < reported["noise_scale"] < float("inf")  # McCandlish's B_simple from rank vs all-reduced gradients
    write_recipe(recipe, "r", steps=12, every=3)
    check(run_train(home, recipe, "--nproc-per-node", "2", env={"GRANARY_GLOBAL_BATCH_SIZE": "4"}))
    lineage = checkpoint_lineage(open_store(Settings.from_env(home=home)), "r-ckpt")
    segments = [(s["first_step"], s["last_step"], s["samples_per_step"]) for s in lineage["segments"]]
    assert segments == [(0, 6, 12), (6, 12, 4)]  # 6 then 2 samples per rank
    assert lineage["samples_consumed"] == 6 * 12 + 6 * 4
    assert _exact(home, "r-ckpt") == [2, 2]  # no gap, no overlap, every step's samples the stream's own


def test_a_non_integer_batch_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_tokens(home)
    recipe = write_recipe(tmp_path / "r.yaml", "r", steps=2, every=2)
    proc = run_train(home, recipe, env={"GRANARY_GLOBAL_BATCH_SIZE": "lots"})
    assert proc.returncode != 0
    assert "GRANARY_GLOBAL_BATCH_SIZE='lots' is not an integer" in proc.stderr
