"""Crash test: SIGKILL the controller at random points while 100 real jobs run; every job runs exactly once."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import sqlalchemy as sa
from tests.integration.sched.conftest import cli, env_for, wait_all_done

from granary.catalog import open_catalog
from granary.sched import tables as t
from granary.sched.journal import submit_job
from granary.sched.model import JobSpec


def test_controller_killed_at_random_points_loses_and_repeats_nothing(tmp_path: Path, catalog_url: str) -> None:
    n_jobs = 100 if catalog_url.startswith("sqlite") else 30
    rng = random.Random(7)
    env = env_for(tmp_path / "home", catalog_url)
    catalog = open_catalog(catalog_url)
    ran = tmp_path / "ran"
    ran.mkdir()
    agent = cli(["sched", "agent", "--node", "n1", "--gpus", "8", "--heartbeat-s", "0.5",
                 "--work-dir", str(tmp_path / "att")], env)
    ids = []
    for i in range(n_jobs):
        deps = (ids[i - 1],) if i % 10 == 9 else ()  # some DAG edges too
        ids.append(submit_job(catalog, JobSpec(
            name=f"job{i}", gpus_per_replica=1 + (i % 7 == 0), cpus_per_replica=0, depends_on=deps,
            command=f"sleep 0.{rng.randint(1, 3)}; echo $GRANARY_ATTEMPT >> {ran}/$GRANARY_JOB_ID")))
    up = ["sched", "up", "--no-agent", "--tick-s", "0.1", "--heartbeat-timeout-s", "30"]
    try:
        for _ in range(5 if n_jobs == 100 else 2):
            ctl = cli(up, env)
            time.sleep(rng.uniform(0.5, 2.0))
            os.killpg(ctl.pid, signal.SIGKILL)
            ctl.wait()
        ctl = cli(up, env)
        rows = wait_all_done(catalog_url, n_jobs, timeout_s=90)
    finally:
        for proc in (locals().get("ctl"), agent):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert sorted(r.state for r in rows) == ["succeeded"] * n_jobs
    for job_id in ids:  # exactly once: one line, from attempt 1
        assert (ran / job_id).read_text() == "1\n", job_id
    with catalog.read() as conn:
        attempts = conn.execute(sa.select(sa.func.count()).select_from(t.attempts)).scalar()
        starts = conn.execute(sa.select(sa.func.count()).select_from(t.events)
                              .where(t.events.c.to_state == "admitted")).scalar()
    assert attempts == n_jobs and starts == n_jobs
