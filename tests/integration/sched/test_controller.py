"""Controller + local agent in one process: a DAG, retries, cancellation, the demo, the CLI views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from granary.catalog import open_catalog
from granary.sched.agent import Agent, AgentConfig
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job, list_nodes, request_cancel, request_drain, submit_job
from granary.sched.model import TERMINAL, JobSpec, NodeSpec
from granary.sched.state import SchedulerConfig


def _wait(catalog, job_id, states, timeout_s=20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = get_job(catalog, job_id)[0]
        if row.state in states:
            return row
        time.sleep(0.05)
    raise AssertionError(f"{job_id} is {get_job(catalog, job_id)[0]}")


def test_dag_retry_cancel_and_drain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    catalog = open_catalog(url)
    controller = Controller(catalog, ControllerConfig(tick_s=0.05, scheduler=SchedulerConfig(backoff_base_s=0.1)))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=2, cpus=4), work_dir=tmp_path / "a",
                                       poll_s=0.05))
    agent.register()
    out = tmp_path / "out"
    prep = submit_job(catalog, JobSpec(name="prep", command=f"echo $CUDA_VISIBLE_DEVICES > {out}.prep",
                                       gpus_per_replica=1))
    train = submit_job(catalog, JobSpec(name="train", gpus_per_replica=2, depends_on=(prep,),
                                        command=f"test -e {out}.prep && echo $CUDA_VISIBLE_DEVICES > {out}.train"))
    flaky = submit_job(catalog, JobSpec(name="flaky", command=f"test -e {out}.flaky || (touch {out}.flaky; exit 4)",
                                        max_restarts=1, cpus_per_replica=0.5))
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for th in threads:
        th.start()
    try:
        assert _wait(catalog, train, TERMINAL).state == "succeeded"
        assert (tmp_path / "out.train").read_text() == "0,1\n"
        row, events, attempts = get_job(catalog, flaky)
        row = _wait(catalog, flaky, TERMINAL)
        assert row.state == "succeeded" and row.job_restarts == 1 and row.attempt == 2
        sleeper = submit_job(catalog, JobSpec(name="sleep", command="sleep 60", gpus_per_replica=1, grace_s=0.5))
        _wait(catalog, sleeper, ("running",))
        pid = get_job(catalog, sleeper)[2][0]["pid"]
        request_cancel(catalog, sleeper)
        assert _wait(catalog, sleeper, TERMINAL).state == "cancelled"
        deadline = time.monotonic() + 10
        while get_job(catalog, sleeper)[2][0]["state"] != "exited":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"  # the runner is gone
        request_drain(catalog, "n1")
        held = submit_job(catalog, JobSpec(name="held", command="true", cpus_per_replica=0))
        time.sleep(0.5)
        assert get_job(catalog, held)[0].state == "pending"
        assert list_nodes(catalog)[0]["status"] == "draining"
        request_drain(catalog, "n1", drained=False)
        assert _wait(catalog, held, TERMINAL).state == "succeeded"
    finally:
        stop.set()
        for th in threads:
            th.join(10)
    _, events, attempts = get_job(catalog, prep)
    assert [e["to_state"] for e in events] == ["pending", "admitted", "running", "succeeded"]
    assert json.loads(attempts[0]["usage"])["cpu_s"] >= 0
    env = {**os.environ, "GRANARY_CATALOG_URL": url, "GRANARY_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "granary.cli.main", "jobs", "--all", "--json"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert {j["name"]: j["state"] for j in json.loads(res.stdout)}["sleep"] == "cancelled"
    res = subprocess.run([sys.executable, "-m", "granary.cli.main", "job", "nope"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "no job 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_demo_runs_its_dag_quickly(tmp_path: Path) -> None:
    from rich.console import Console

    from granary.config import Settings
    from granary.sched import demo

    console = Console(quiet=True)
    summary = demo.run(Settings.from_env(home=tmp_path), console)
    assert summary["succeeded"] == 3 and summary["failed"] == 0
    assert [j["name"] for j in summary["jobs"]] == ["prepare", "train", "evaluate"]
    assert summary["seconds"] < 15
    catalog = open_catalog(Settings.from_env(home=tmp_path).catalog_url)
    assert list_nodes(catalog) == []  # its simulated 2-GPU node does not stay to hold later jobs


def test_agent_fences_attempts_the_controller_declared_lost(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from granary.sched import tables as t

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    controller = Controller(catalog, ControllerConfig(tick_s=0.05))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name="n1", gpus=1, cpus=2), work_dir=tmp_path / "a"))
    agent.register()
    job_id = submit_job(catalog, JobSpec(name="long", command="sleep 60", gpus_per_replica=1))
    controller.recover()
    controller.step()  # admits: an attempt row for n1
    agent.step()  # launches it
    pid = get_job(catalog, job_id)[2][0]["pid"]
    assert Path(f"/proc/{pid}").exists()
    with catalog.write() as conn:  # what the controller writes when n1 misses its heartbeats
        conn.execute(t.attempts.update().where(t.attempts.c.job_id == job_id).values(state="lost", acked="lost"))
    agent.step()  # the agent comes back and finds an attempt it must not run any more
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the stale attempt was not killed"
        time.sleep(0.05)
    agent.step()  # reaps it
    assert not agent.executor.procs
    with catalog.read() as conn:
        assert conn.execute(sa.select(t.attempts.c.state)).scalar() == "lost"
