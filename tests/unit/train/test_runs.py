"""A run's records for readers: the loss curve after restarts, thinning, status, torn log lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from granary.train.runs import loss_curve, read_run_files, run_folder, run_status


def test_loss_curve_keeps_the_latest_attempt_of_a_repeated_step() -> None:
    metrics = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": 3.9},
               {"step": 2, "eval_loss": 4.5},  # an evaluation joins its step's point
               {"step": 3, "loss": 3.5, "attempt": 1}]  # restarted from step 2: step 3 again
    assert loss_curve(metrics) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "eval_loss": 4.5},
                                   {"step": 3, "loss": 3.5}]


def test_loss_curve_thins_evenly_and_keeps_the_last_step() -> None:
    metrics = [{"step": s, "loss": 1.0 / s} for s in range(1, 101)]
    steps = [p["step"] for p in loss_curve(metrics, max_points=5)]
    assert steps == [1, 21, 41, 61, 100]
    with pytest.raises(ValueError, match="max_points"):
        loss_curve(metrics, max_points=0)


def test_status() -> None:
    assert run_status(10, 10, None) == "finished"
    assert run_status(4, 10, 1000.0, now=1100.0) == "running"
    assert run_status(4, 10, 1000.0, now=2000.0) == "stopped"
    assert run_status(4, None, None) == "stopped"


def test_run_files_skip_a_torn_line_and_name_the_folder(tmp_path: Path) -> None:
    folder = run_folder({"run": "r1", "recipe": {"name": "r1", "run_dir": None}}, tmp_path)
    assert folder == tmp_path / "train" / "r1"
    assert run_folder({"recipe": {"run_dir": "/x/y"}}, tmp_path) == Path("/x/y")
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + '\n{"step": 2, "lo')
    files = read_run_files(folder)
    assert files.metrics == [{"step": 1, "loss": 2.0}] and files.restarts == [] and files.updated_at is not None
    assert read_run_files(tmp_path / "nowhere").updated_at is None
