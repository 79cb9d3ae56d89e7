"""The node agent: registers its node, heartbeats, and runs the attempts the controller assigns to it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.sched import tables as t
from granary.sched.checkpoint import latest_checkpoint, read_report
from granary.sched.executors.base import job_env
from granary.sched.executors.local import LocalExecutor
from granary.sched.journal import register_node
from granary.sched.model import JobSpec, NodeSpec
from granary.sched.progress import StepTimes

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class AgentConfig:
    """Knobs of a node agent.

    Attributes:
        node: the node this agent runs (name, GPUs, CPUs, memory, labels).
        work_dir: where attempt directories (logs, exit codes) live.
        poll_s: seconds between polls of the catalog and the processes.
        heartbeat_s: seconds between heartbeats (must be well under the controller's heartbeat timeout).
        cache_dir: a directory whose sub-directory names are the datasets cached on this node.
        progress_s: seconds between reports of a training job's step times to the controller (its goodput model).
    """

    node: NodeSpec
    work_dir: Path
    poll_s: float = 0.2
    heartbeat_s: float = 1.0
    cache_dir: Path | None = None
    progress_s: float = 5.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("poll_s and heartbeat_s must be > 0")


def detect_node(name: str | None = None, *, gpus: int | None = None, labels: dict[str, str] | None = None) -> NodeSpec:
    """This machine as a NodeSpec (GPUs from ``nvidia-smi``-free detection: CUDA_VISIBLE_DEVICES or 0)."""
    import socket

    import psutil

    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = len([g for g in visible.split(",") if g]) if visible else len(list(Path("/dev").glob("nvidia[0-9]*")))
    return NodeSpec(name=name or socket.gethostname(), gpus=gpus, cpus=float(os.cpu_count() or 1),
                    memory_bytes=int(psutil.virtual_memory().total), labels=labels or {})


class Agent:
    """Runs assigned attempts on this node as local processes.

    Args:
        catalog: the catalog shared with the controller.
        config: the knobs.
        clock: time source.
    """

    def __init__(self, catalog: Catalog, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.config = config
        self.clock = clock
        self.executor = LocalExecutor(config.work_dir)
        self._last_beat = 0.0
        self._steps: dict[str, StepTimes] = {}  # attempt name -> its step-time reader
        self._progress_at: dict[str, float] = {}

    def register(self) -> None:
        """Insert or refresh this node's row."""
        with self.catalog.write() as conn:
            register_node(conn, self.config.node, self.clock(), cached=self._cached())

    def run(self, stop: threading.Event | None = None) -> None:
        """Register, then poll until ``stop`` is set (running attempts keep running after the agent stops)."""
        stop = stop or threading.Event()
        self.register()
        while not stop.is_set():
            self.step()
            stop.wait(self.config.poll_s)

    def step(self) -> None:
        """Heartbeat when due, launch assigned attempts, pass on stop requests, report exits."""
        now = self.clock()
        if now - self._last_beat >= self.config.heartbeat_s:
            self._heartbeat(now)
        name = self.config.node.name
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.attempts, t.jobs.c.spec).join(t.jobs, t.jobs.c.id == t.attempts.c.job_id)
                                .where(t.attempts.c.node == name, t.attempts.c.executor == "local",
                                       t.attempts.c.state.in_(t.ATTEMPT_OPEN))).all()
        live = set()
        for row in rows:
            attempt_name = f"{row.job_id}-{row.attempt}-{row.replica}"
            live.add(attempt_name)
            try:
                self._advance(row, attempt_name, JobSpec.from_dict(json.loads(row.spec)))
            except OSError as exc:  # a launch that fails is the job's failure, not the agent's
                log.warning("attempt %s failed to launch: %s", attempt_name, exc)
                self._update(row, state="exited", exit_code=127, ended_at=self.clock())
        for attempt_name in list(self.executor.procs):
            if attempt_name not in live:  # closed by the controller (node declared lost): fence it
                log.warning("stopping attempt %s: the controller no longer expects it here", attempt_name)
                self.executor.stop(attempt_name, 0.0)
                self.executor.poll(attempt_name)

    def _advance(self, row: Any, attempt_name: str, spec: JobSpec) -> None:
        now = self.clock()
        d = self.executor.attempt_dir(attempt_name)
        if row.state == "assigned":
            if row.stop_requested:
                self._update(row, state="exited", exit_code=-15, ended_at=now)
                return
            if not self._claim(row):
                return
        if row.state in ("assigned", "launching"):
            env = job_env(spec, job_id=row.job_id, attempt=row.attempt, replica=row.replica,
                          gpu_ids=tuple(json.loads(row.gpu_ids)), report_file=str(d / "report.json"))
            found = latest_checkpoint(spec.checkpoint_dir)
            try:
                self.executor.launch(attempt_name, spec, env)
            except RuntimeError as exc:
                log.warning("%s", exc)
                self._update(row, state="lost", ended_at=now)
                return
            self._update(row, state="running", pid=self.executor.procs[attempt_name].pid, started_at=now,
                         log_path=str(d / "log.txt"), checkpoint=found[0] if found else None,
                         resumed_step=found[1] if found else None)
            return
        if row.stop_requested:
            if attempt_name not in self.executor.procs:
                self.executor.adopt(attempt_name)
            self.executor.stop(attempt_name, row.grace_s)
        report = read_report(d / "report.json")
        step = report.get("resumed_step")
        if step is not None and step != row.resumed_step:
            self._update(row, resumed_step=int(step), acked="")
        if report.get("run_dir") and now - self._progress_at.get(attempt_name, 0.0) >= self.config.progress_s:
            self._progress_at[attempt_name] = now
            self._report_progress(row, attempt_name, report)
        status = self.executor.poll(attempt_name)
        if status.state == "exited":
            self._steps.pop(attempt_name, None)
            self._progress_at.pop(attempt_name, None)
            usage = _read_json(d / "usage.json")
            self._update(row, state="exited", exit_code=status.exit_code, ended_at=now, usage=json.dumps(usage))
        elif status.state == "lost":
            self._update(row, state="lost", ended_at=now)

    def _report_progress(self, row: Any, attempt_name: str, report: dict[str, Any]) -> None:
        """Put the attempt's recent step time and samples per GPU in its ``usage`` for the controller."""
        reader = self._steps.get(attempt_name)
        if reader is None:
            reader = self._steps[attempt_name] = StepTimes(Path(str(report["run_dir"])), since=row.started_at or 0.0)
        summary = reader.read()
        if summary is None:
            return
        usage = {**summary, "local_batch": report.get("local_batch"), "world_size": report.get("world_size"),
                 "noise_scale": report.get("noise_scale")}
        self._update(row, usage=json.dumps(usage), acked="")

    def _claim(self, row: Any) -> bool:
        with self.catalog.write() as conn:
            res = conn.execute(t.attempts.update().where(
                t.attempts.c.job_id == row.job_id, t.attempts.c.attempt == row.attempt,
                t.attempts.c.replica == row.replica, t.attempts.c.state == "assigned").values(state="launching"))
            return res.rowcount == 1

    def _update(self, row: Any, **values: Any) -> None:
        with self.catalog.write() as conn:
            conn.execute(t.attempts.update().where(
                t.attempts.c.job_id == row.job_id, t.attempts.c.attempt == row.attempt,
                t.attempts.c.replica == row.replica).values(**values))

    def _heartbeat(self, now: float) -> None:
        import psutil

        with self.catalog.write() as conn:
            conn.execute(t.nodes.update().where(t.nodes.c.name == self.config.node.name).values(
                last_heartbeat=now, utilization=psutil.cpu_percent(interval=None) / 100.0,
                cached=json.dumps(self._cached()), agent_pid=os.getpid()))
        self._last_beat = now

    def _cached(self) -> list[str]:
        d = self.config.cache_dir
        if d is None or not Path(d).is_dir():
            return []
        return sorted(p.name for p in Path(d).iterdir() if p.is_dir())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
