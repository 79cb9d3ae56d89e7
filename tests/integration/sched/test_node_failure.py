"""Node failure: an agent stops heartbeating; its job is requeued within the timeout and resumes from its
latest complete checkpoint on another node, which the scheduler records."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from tests.integration.sched.conftest import cli, env_for

from granary.catalog import open_catalog
from granary.sched import tables as t
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job, submit_job
from granary.sched.model import JobSpec
from granary.sched.state import SchedulerConfig

HEARTBEAT_TIMEOUT_S = 1.5


def _attempt_rows(catalog, job_id):  # type: ignore[no-untyped-def]
    with catalog.read() as conn:
        return conn.execute(sa.select(t.attempts).where(t.attempts.c.job_id == job_id)
                            .order_by(t.attempts.c.attempt)).all()


def test_lost_node_requeues_job_which_resumes_from_checkpoint(tmp_path: Path, catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    env = env_for(tmp_path / "home", catalog_url)
    agents = {name: cli(["sched", "agent", "--node", name, "--gpus", "1", "--heartbeat-s", "0.2",
                         "--work-dir", str(tmp_path / name)], env) for name in ("n1", "n2")}
    ckpt = tmp_path / "ckpt"
    script = Path(__file__).with_name("job_ckpt.py")
    job_id = submit_job(catalog, JobSpec(name="train", gpus_per_replica=1, checkpoint_dir=str(ckpt),
                                         command=f"{sys.executable} {script} 30", max_node_restarts=2))
    controller = Controller(catalog, ControllerConfig(tick_s=0.1, scheduler=SchedulerConfig(
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, backoff_base_s=0.2)))
    stop = threading.Event()
    thread = threading.Thread(target=controller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (ckpt / "step_5" / "_COMPLETE").exists():
            assert time.monotonic() < deadline, "the job never checkpointed step 5"
            time.sleep(0.05)
        first = _attempt_rows(catalog, job_id)[0]
        victim = agents[first.node]
        os.killpg(victim.pid, signal.SIGKILL)  # the agent goes silent (SIGKILL: no SQLite lock is left held)
        os.killpg(first.pid, signal.SIGKILL)  # ... and the node's processes die with it
        lost_at = time.time()
        while len(_attempt_rows(catalog, job_id)) < 2:
            assert time.time() - lost_at < 15, "the job was not requeued"
            time.sleep(0.05)
        requeued_in = _attempt_rows(catalog, job_id)[1].created_at - lost_at
        while get_job(catalog, job_id)[0].state != "succeeded":
            assert time.time() - lost_at < 40, get_job(catalog, job_id)[0]
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
        for proc in agents.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    row, events, attempts = get_job(catalog, job_id)
    assert requeued_in < HEARTBEAT_TIMEOUT_S + 1.5  # timeout + controller tick + backoff + slack
    second = attempts[-1]
    assert second["node"] != first.node and second["attempt"] == 2 and second["exit_code"] == 0
    resumed = int((ckpt / "finished_attempt_2").read_text())
    assert resumed >= 5 and second["resumed_step"] == resumed and row.resumed_step == resumed
    assert row.node_restarts == 1 and row.job_restarts == 0
    reasons = [e["reason"] for e in events]
    assert any(f"node {first.node} lost: no heartbeat" in r for r in reasons)
    assert any(f"resumed from step {resumed}" in r for r in reasons)
    assert not (ckpt / "finished_attempt_1").exists()
