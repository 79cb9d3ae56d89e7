"""Step times of a running training job: read by the agent from the run's metrics, fitted by the controller."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from granary.catalog import open_catalog
from granary.sched import tables as t
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import register_node, submit_job
from granary.sched.model import JobSpec, NodeSpec
from granary.sched.progress import StepTimes
from granary.sched.state import SchedulerConfig


def test_step_times_skip_warmup_and_older_attempts_and_follow_the_file(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"time": 5.0, "step": 1, "step_seconds": 9.0}]  # an earlier attempt's step
    lines += [{"time": 10.0 + i, "step": i, "step_seconds": s} for i, s in enumerate([3.0, 2.0, 0.5, 0.7, 0.6])]
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"time": 20.0, "step_sec')  # a partial line
    reader = StepTimes(tmp_path, since=10.0)
    assert reader.read() == {"step_seconds": 0.6, "steps": 3}  # the two warm-up steps left out
    assert reader.read() is None  # nothing new
    with open(metrics, "a") as f:
        f.write('onds": 0.4}\n')
    assert reader.read() == {"step_seconds": 0.55, "steps": 4}


def test_reported_step_times_fit_the_jobs_goodput_model(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    now = [100.0]
    controller = Controller(catalog, ControllerConfig(scheduler=SchedulerConfig(
        policy="pollux", policy_options={"interval_s": 1.0, "min_run_s": 0.0})), clock=lambda: now[0])
    with catalog.write() as conn:
        register_node(conn, NodeSpec(name="n1", gpus=4, cpus=8), 100.0)
    job_id = submit_job(catalog, JobSpec(name="j", command="sleep 60", gpus_per_replica=2, resizable=True,
                                         min_gpus=1, max_gpus=4, batch_size=16, max_batch_size=64))
    controller.recover()
    controller.step()
    gpus = controller.state.jobs[job_id].spec.gpus
    usage = {"step_seconds": 0.25, "steps": 10, "local_batch": 8.0, "world_size": gpus, "noise_scale": 500.0}
    with catalog.write() as conn:  # what the agent writes for a running attempt
        conn.execute(t.attempts.update().where(t.attempts.c.job_id == job_id).values(
            state="running", started_at=100.0, usage=json.dumps(usage), acked=""))
    now[0] = 101.0
    controller.step()
    model = controller.state.models[job_id]
    assert model is controller.fitted[job_id]
    assert model.observations == [(gpus, 1, 8.0, 0.25)]
    assert model.noise_scale == 0.9 * 1000.0 + 0.1 * 500.0  # the prior, moved towards the measurement
    assert abs(float(model.step_time(gpus, 1, 8.0 * gpus)) - 0.25) < 0.05  # the fit goes through the measurement
    now[0] = 102.0
    with catalog.write() as conn:  # the same report again (acked reset): not fed twice
        conn.execute(t.attempts.update().where(t.attempts.c.job_id == job_id).values(acked=""))
    controller.step()
    assert len(controller.fitted[job_id].observations) == 1
    with catalog.read() as conn:
        assert conn.execute(sa.select(t.jobs.c.state).where(t.jobs.c.id == job_id)).scalar_one() == "running"
