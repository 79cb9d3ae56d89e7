"""The batch size `pollux` chooses reaches the job: the launched spec carries GRANARY_GLOBAL_BATCH_SIZE."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from granary.catalog import open_catalog
from granary.sched import tables as t
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import register_node, submit_job
from granary.sched.model import JobSpec, NodeSpec
from granary.sched.state import SchedulerConfig


def _launched(tmp_path: Path, **fields: object) -> tuple[dict[str, str], int | None]:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    controller = Controller(catalog, ControllerConfig(scheduler=SchedulerConfig(
        policy="pollux", policy_options={"interval_s": 1.0, "min_run_s": 0.0})), clock=lambda: 100.0)
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="n1", gpus=4, cpus=8), 100.0)
    job_id = submit_job(catalog, JobSpec(name="j", command="true", gpus_per_replica=1, resizable=True, min_gpus=1,
                                         max_gpus=4, **fields))  # type: ignore[arg-type]
    controller.recover()
    controller.step()
    with catalog.read() as conn:
        spec = json.loads(conn.execute(sa.select(t.jobs.c.spec).where(t.jobs.c.id == job_id)).scalar_one())
    return spec["env"], controller.state.jobs[job_id].batch_size


def test_a_job_with_a_batch_range_gets_the_chosen_global_batch(tmp_path: Path) -> None:
    env, chosen = _launched(tmp_path, batch_size=32, min_batch_size=16, max_batch_size=256)
    assert chosen is not None and 16 <= chosen <= 256
    assert env["GRANARY_GLOBAL_BATCH_SIZE"] == str(chosen)


def test_a_job_without_a_batch_size_keeps_its_own(tmp_path: Path) -> None:
    env, _ = _launched(tmp_path)
    assert "GRANARY_GLOBAL_BATCH_SIZE" not in env
