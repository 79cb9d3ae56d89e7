"""The scheduler part of `granary demo`: a controller and a local agent in-process run a small job DAG."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from granary.catalog import open_catalog
from granary.config import Settings
from granary.sched import tables as t
from granary.sched.agent import Agent, AgentConfig
from granary.sched.controller import Controller, ControllerConfig
from granary.sched.journal import get_job
from granary.sched.model import TERMINAL, JobSpec, NodeSpec
from granary.sched.spec import submit_specs
from granary.sched.state import SchedulerConfig

DEMO_NODE = "demo-local"

DEFAULT_DAG: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("prepare", f"{sys.executable} -c \"print('prepare: data ready')\"", ()),
    ("train", f"{sys.executable} -c \"import os; print('train on GPUs', os.environ['CUDA_VISIBLE_DEVICES'])\"",
     ("prepare",)),
    ("evaluate", f"{sys.executable} -c \"print('evaluate: ok')\"", ("train",)),
)


def run(store_settings: Settings, console: Any, *, commands: list[tuple[str, str, tuple[str, ...]]] | None = None,
        timeout_s: float = 60.0) -> dict[str, Any]:
    """Run a DAG of jobs through the scheduler with the local executor and wait for it.

    Args:
        store_settings: the demo's settings (its catalog holds the jobs; attempts go under its home).
        console: a rich console for progress lines.
        commands: (name, shell command, names it depends on) in submission order (default: a
            prepare -> train -> evaluate DAG of tiny Python commands).
        timeout_s: give up waiting after this long.

    Returns:
        {"jobs": [{"name", "id", "state", "attempts", "seconds"}], "succeeded": n, "failed": n, "seconds": s}
    """
    catalog = open_catalog(store_settings.catalog_url)
    home = store_settings.home / "sched"
    controller = Controller(catalog, ControllerConfig(tick_s=0.05, scheduler=SchedulerConfig(backoff_base_s=0.5)))
    agent = Agent(catalog, AgentConfig(node=NodeSpec(name=DEMO_NODE, gpus=2, cpus=2.0), work_dir=home / "attempts",
                                       poll_s=0.05))
    agent.register()
    specs = [JobSpec(name=name, command=cmd, depends_on=deps, gpus_per_replica=1 if name == "train" else 0,
                     cpus_per_replica=0.5, tenant="demo") for name, cmd, deps in (commands or DEFAULT_DAG)]
    t0 = time.monotonic()
    ids = submit_specs(catalog, specs)
    stop = threading.Event()
    threads = [threading.Thread(target=x.run, args=(stop,), daemon=True) for x in (controller, agent)]
    for th in threads:
        th.start()
    done: set[str] = set()
    try:
        while len(done) < len(ids) and time.monotonic() - t0 < timeout_s:
            for name, job_id in ids.items():
                row = get_job(catalog, job_id)[0]
                if row.state in TERMINAL and name not in done:
                    done.add(name)
                    console.print(f"  job {name} ({job_id}): {row.state}")
            time.sleep(0.05)
    finally:
        stop.set()
        for th in threads:
            th.join(10)
        # the demo's node is simulated (2 GPUs that may not exist here): take it out of the catalog, so later
        # jobs are not held for it (the jobs and their attempts stay, for `granary jobs --all`)
        with catalog.write() as conn:
            conn.execute(t.nodes.delete().where(t.nodes.c.name == DEMO_NODE))
    jobs = []
    for name, job_id in ids.items():
        row = get_job(catalog, job_id)[0]
        took = (row.finish_time - row.submit_time) if row.finish_time else None
        jobs.append({"name": name, "id": job_id, "state": row.state, "attempts": row.attempt, "seconds": took})
    return {"jobs": jobs, "succeeded": sum(j["state"] == "succeeded" for j in jobs),
            "failed": sum(j["state"] != "succeeded" for j in jobs), "seconds": time.monotonic() - t0}
