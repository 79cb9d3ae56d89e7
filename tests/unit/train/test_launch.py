"""How `granary train` starts workers: forked from a preloaded agent where that is safe, timed phase by phase."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from granary.train import launch


def test_process_started_is_this_process_start() -> None:
    started = launch.process_started()
    assert started <= time.time()
    # this test process started before pytest collected it, and not before the machine booted
    assert time.time() - started < 24 * 3600 * 365


def test_fork_is_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANARY_TRAIN_FORK", "0")
    assert launch.fork_safe() is False
    monkeypatch.setenv("GRANARY_TRAIN_FORK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.fork_safe() is True  # no GPU visible: nothing a fork could break


def test_marks_start_a_record_and_add_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launch.LAUNCH_TIMES, json.dumps({"stale": 1.0}))
    launch.mark("agent_launch", first=True)
    launch.mark("agent_preloaded")
    times = json.loads(os.environ[launch.LAUNCH_TIMES])
    assert set(times) == {"agent_started", "agent_launch", "agent_preloaded"}
    assert times["agent_started"] <= times["agent_launch"] <= times["agent_preloaded"]


def test_a_recipe_runs_in_forked_workers(tmp_path: Path) -> None:
    from tests.integration.train.helpers import check, make_tokens, run_train, write_recipe

    pytest.importorskip("torch")
    home = tmp_path / "home"
    make_tokens(home)
    recipe = write_recipe(tmp_path / "r.yaml", "r", steps=3, every=3)
    check(run_train(home, recipe, "--nproc-per-node", "2"))
    (record,) = [json.loads(x) for x in (tmp_path / "r" / "startup.jsonl").read_text().splitlines()]
    assert record["forked"] is True
    assert (record["agent_started"] <= record["agent_torch_imported"] <= record["agent_preloaded"]
            <= record["worker_started"] <= record["worker_imported"])
