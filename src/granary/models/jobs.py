"""Scheduler jobs for model work: evaluation shards, search trials and model servers run as ``sched`` jobs.

:class:`LocalJobs` brings up what runs them on this machine: a node agent (its node carries a label that only
these jobs select, so they land here) and a controller. When another controller already holds the catalog's
lease, that one schedules the jobs and only the agent runs here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from granary.models.errors import ModelError

if TYPE_CHECKING:
    from granary.catalog import Catalog
    from granary.sched.journal import JobRow
    from granary.sched.model import JobSpec

log = logging.getLogger(__name__)
POOL_LABEL = "granary-models-pool"


class LocalJobs:
    """A controller and a local agent in threads, for the lifetime of a ``with`` block.

    Args:
        catalog: the catalog holding the scheduler's tables.
        work_dir: where attempt directories (logs, exit codes) go.
        cpus: CPU cores the node offers (jobs ask for one each).
        tick_s: scheduler tick and agent poll interval.
    """

    def __init__(self, catalog: Catalog, work_dir: Path, *, cpus: int | None = None, tick_s: float = 0.05) -> None:
        from granary.sched.model import NodeSpec

        self.catalog = catalog
        self.pool = f"models-{uuid.uuid4().hex[:10]}"
        self.node = NodeSpec(name=self.pool, gpus=0, cpus=float(cpus or os.cpu_count() or 1),
                             labels={POOL_LABEL: self.pool})
        self.work_dir = work_dir
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._agent: Any = None

    def __enter__(self) -> LocalJobs:
        from granary.sched.agent import Agent, AgentConfig
        from granary.sched.controller import Controller, ControllerConfig
        from granary.sched.state import SchedulerConfig

        agent = Agent(self.catalog, AgentConfig(node=self.node, work_dir=self.work_dir, poll_s=self.tick_s))
        agent.register()
        self._agent = agent
        controller = Controller(self.catalog, ControllerConfig(tick_s=self.tick_s,
                                                               scheduler=SchedulerConfig(backoff_base_s=0.5)))
        self._threads = [threading.Thread(target=self._control, args=(controller,), daemon=True),
                         threading.Thread(target=agent.run, args=(self._stop,), daemon=True)]
        for th in self._threads:
            th.start()
        return self

    def _control(self, controller: object) -> None:
        from granary.sched.lease import ControllerBusyError

        try:
            controller.run(self._stop)  # type: ignore[attr-defined]
        except ControllerBusyError:
            log.info("another controller holds the lease; it schedules the jobs of pool %s", self.pool)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        from granary.sched import tables as t

        self._stop.set()
        for th in self._threads:
            th.join(10)
        # the node lives only as long as this block, so nothing can adopt or stop what still runs on it: kill every
        # attempt its agent started (a job cancelled just before the block ended may not have been signalled yet)
        if self._agent is not None:
            self._agent.executor.kill_all()
        with self.catalog.write() as conn:
            conn.execute(t.nodes.delete().where(t.nodes.c.name == self.node.name))

    def spec(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, max_restarts: int = 0,
             grace_s: float = 5.0) -> JobSpec:
        """A one-CPU job pinned to this pool, running ``python argv...`` with this process's interpreter."""
        from granary.sched.model import JobSpec

        return JobSpec(name=name, command=(sys.executable, *argv), cpus_per_replica=1.0, tenant="models",
                       node_selector={POOL_LABEL: self.pool}, env=dict(env or {}), max_restarts=max_restarts,
                       grace_s=grace_s)

    def submit(self, spec: JobSpec) -> str:
        from granary.sched.journal import submit_job

        return submit_job(self.catalog, spec)

    def wait(self, job_ids: Sequence[str], *, timeout_s: float) -> dict[str, JobRow]:
        """Block until every job ended (succeeded, failed, cancelled); returns their rows."""
        from granary.sched.journal import get_job
        from granary.sched.model import TERMINAL

        deadline = time.monotonic() + timeout_s
        done: dict[str, JobRow] = {}
        while len(done) < len(job_ids):
            for job_id in job_ids:
                if job_id not in done:
                    row = get_job(self.catalog, job_id)[0]
                    if row.state in TERMINAL:
                        done[job_id] = row
            if len(done) < len(job_ids):
                if time.monotonic() > deadline:
                    raise ModelError(f"jobs {sorted(set(job_ids) - set(done))} did not finish in {timeout_s:g}s",
                                     hint=f"see their logs under {self.work_dir}")
                time.sleep(self.tick_s)
        return done

    def log_tail(self, job_id: str, chars: int = 2000) -> str:
        """The end of a job's output (its attempts' ``log.txt``)."""
        logs = sorted(self.work_dir.glob(f"{job_id}-*/log.txt"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else ""
