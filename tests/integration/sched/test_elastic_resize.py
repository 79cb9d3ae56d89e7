"""Real resizes: two CPU training jobs of the reference recipe under the local executor, resized by the controller
(`pollux`) while they run; each resize goes through the job's checkpoint and the sample sequence stays exact."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.integration.train.helpers import make_tokens, write_recipe

from granary.catalog import open_catalog
from granary.sched.agent import Agent, AgentConfig
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job, submit_job
from granary.sched.model import TERMINAL, JobSpec, NodeSpec
from granary.sched.state import SchedulerConfig

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

POLLUX = {"interval_s": 0.5, "min_resize_interval_s": 0.0, "min_run_s": 0.0, "restart_cost_s": 0.0,
          "hold_until_resumed": True}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if "loss" in r]


def _wait(what: str, cond: Any, timeout_s: float, show: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout_s} s: {show() if show else ''}")


def _exact(home: Path, dataset: str) -> list[int]:
    """Check the run's sample sequence: consecutive segments cover the stream without gap or overlap, and the
    samples of every step are the stream's own, in order. Returns the world size of each segment."""
    from granary.config import Settings
    from granary.store import open_store
    from granary.stream import StreamingDataset
    from granary.train.lineage import checkpoint_lineage, sample_ids

    store = open_store(Settings.from_env(home=home))
    lineage = checkpoint_lineage(store, dataset)
    position = 0
    for seg in lineage["segments"]:
        assert seg["first_position"] == position, lineage["segments"]
        position += (seg["last_step"] - seg["first_step"]) * seg["samples_per_step"]
    assert position == lineage["samples_consumed"]
    ids = sample_ids(store, lineage)
    data = lineage["data"]
    ds = StreamingDataset(data["refs"][0], batch_size=1, seq_len=data["seq_len"], seed=data["seed"],
                          shuffle=data["shuffle"], rank=0, world_size=1, store=store, output="numpy")
    source, sample = ds.stream.locate(np.arange(0, position, dtype=np.int64))
    assert [(s, i) for _, s, i in ids] == list(zip(source.tolist(), sample.tolist(), strict=True))
    return [int(seg["world_size"]) for seg in lineage["segments"]]


def test_controller_resizes_running_training_jobs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_tokens(home)
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    # the scenario's sizes come from the prior model: the models fitted to the measured step times are kept aside
    # (on this loaded 2-core machine 2 ranks may not beat 1, and pollux would then rightly not grow the job back)
    controller = Controller(catalog, ControllerConfig(tick_s=0.1, goodput_from_reports=False, scheduler=SchedulerConfig(
        policy="pollux", policy_options=POLLUX)))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=2, cpus=4), work_dir=tmp_path / "a",
                                       poll_s=0.05, progress_s=1.0))
    agent.register()
    env = {"GRANARY_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    model = {"d_model": 32, "context": 32}
    big = write_recipe(tmp_path / "big.yaml", "big", steps=200, every=50, model=model)
    small = write_recipe(tmp_path / "small.yaml", "small", steps=20, every=10, model=model)
    elastic = dict(gpus_per_replica=1, resizable=True, min_gpus=1, max_gpus=2, grace_s=60.0, env=env)
    # big's steps take at least 0.15 s (a straggler delay on rank 0), so its 200 steps outlast small's start and
    # run whatever the machine's speed: on a quiet machine its 1-GPU attempt once finished all 200 steps before
    # small ended, the grow-back found nothing left to train, and the third segment had no steps
    big_env = {**env, "GRANARY_TRAIN_SLOW": "0:0.15"}
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for th in threads:
        th.start()
    try:
        a = submit_job(catalog, JobSpec(name="big", recipe=str(big), **{**elastic, "env": big_env}))  # type: ignore[arg-type]
        _wait("big trains", lambda: len(_metrics(tmp_path / "big")) >= 3, 60, lambda: get_job(catalog, a)[1])
        b = submit_job(catalog, JobSpec(name="small", recipe=str(small), **elastic))  # type: ignore[arg-type]
        rows = [_wait(f"{j} done", lambda j=j: get_job(catalog, j)[0].state in TERMINAL and get_job(catalog, j),
                      240, lambda j=j: get_job(catalog, j)[1][-3:]) for j in (a, b)]
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    (row_a, events_a, attempts_a), (row_b, _, _) = rows
    assert row_a.state == "succeeded" and row_b.state == "succeeded", (events_a, attempts_a)
    resizes = [e for e in events_a if e["reason"].startswith("resized")]
    assert [e["reason"].split(" (")[0] for e in resizes][:2] == ["resized 2 -> 1 GPUs", "resized 1 -> 2 GPUs"]
    assert _exact(home, "big-ckpt")[:3] == [2, 1, 2]  # world size of each run of steps: it trained at both sizes
    assert _exact(home, "small-ckpt") == [1]
    # the agent reported big's measured step times (4 samples per rank) and the controller fitted its model to them
    observations = controller.fitted[a].observations
    assert observations and all(g in (1, 2) and n == 1 and m == 4.0 and 0 < sec < 60
                                for g, n, m, sec in observations), observations
    # decision -> first step at the new size: the first step logged after the next attempt was launched (the
    # old attempt had exited by then: the controller creates the next attempt only once the old one ended)
    records = _metrics(tmp_path / "big")
    ended = {at["attempt"]: at["ended_at"] for at in attempts_a}
    started = {at["attempt"]: at["started_at"] for at in attempts_a}
    delays = []
    for e in resizes:
        old = int(e["correlation_id"].split(".")[1])
        until = started.get(old + 2) or float("inf")  # an attempt stopped before its first step has no figure
        stepped = [r for r in records if started[old + 1] < r["time"] < until]
        if not stepped:
            print(f"{e['reason']}: the next attempt was resized again before its first step")
            continue
        first = min(stepped, key=lambda r: r["time"])
        delays.append(first["time"] - e["at"])
        print(f"{e['reason']}: old attempt exited after {ended[old] - e['at']:.2f} s, the next launched after "
              f"{started[old + 1] - e['at']:.2f} s, its first step (step {first['step']}) after "
              f"{first['time'] - e['at']:.2f} s")
    assert delays and all(0 < d < 60 for d in delays), delays
