"""The controller: a loop that reads events from the catalog, runs the state machine, and writes decisions.

Every tick is one write transaction: agents' reports, new jobs, cancel and drain requests go in; starts
(attempt rows), stop requests and the job/event rows come out. A controller killed at any point loses at
most the tick in flight, which never committed; on restart :meth:`Controller.recover` rebuilds the state
machine from the rows. Attempts are created once per job attempt and launched once by whoever claims them,
so no job runs twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from granary.catalog import Catalog
from granary.sched import tables as t
from granary.sched.errors import SchedError
from granary.sched.executors import Executor, get_executor
from granary.sched.goodput import GoodputModel
from granary.sched.journal import job_from_row, job_values, node_spec, register_node
from granary.sched.lease import Lease
from granary.sched.model import (
    ACTIVE,
    TERMINAL,
    Decision,
    JobSpec,
    NodeSpec,
    PreemptDecision,
    ResizeDecision,
    StartDecision,
)
from granary.sched.recurring import fire_due
from granary.sched.state import SchedulerConfig, SchedulerState

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class ControllerConfig:
    """Knobs of the control loop.

    Attributes:
        scheduler: the state machine's knobs (policy, placement, heartbeat timeout, backoff).
        tick_s: seconds between ticks.
        executor_options: options per remote executor name (``slurm``, ``ray``, ``k8s``).
        remote_nodes: capacity that a remote executor provides, as nodes labelled ``executor=<name>``
            (e.g. ``NodeSpec(name="slurm", cpus=64, gpus=16, labels={"executor": "slurm"})``); the
            controller heartbeats them itself.
        lease_s: ``run`` holds the catalog's controller lease (one controller at a time); a holder silent
            for this long may be replaced.
        goodput_from_reports: resizable jobs' goodput models are fitted to the step times their agents report
            (kept in :attr:`Controller.fitted`); when true the policy uses them, when false it keeps the prior
            (a test of a fixed resize scenario).
    """

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tick_s: float = 0.5
    executor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote_nodes: tuple[NodeSpec, ...] = ()
    lease_s: float = 30.0
    goodput_from_reports: bool = True

    def __post_init__(self) -> None:
        if self.tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {self.tick_s}")
        if self.lease_s < 2 * self.tick_s:
            raise ValueError(f"lease_s must be at least two ticks ({2 * self.tick_s:g} s), got {self.lease_s}")


class Controller:
    """Runs the scheduler against the catalog.

    Args:
        catalog: the catalog holding the ``sched_*`` tables.
        config: the knobs.
        clock: time source (tests may pass a fake one).
    """

    def __init__(self, catalog: Catalog, config: ControllerConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.config = config or ControllerConfig()
        self.clock = clock
        self.state = SchedulerState(self.config.scheduler)
        self.executors: dict[str, Executor] = {}
        self.ticks = 0
        self.lease: Lease | None = None
        self.resizing: dict[str, ResizeDecision] = {}  # resized jobs whose old attempt has not exited yet
        self._fed: dict[tuple[str, int, int], Any] = {}  # step reports already fed to a goodput model
        self.fitted: dict[str, GoodputModel] = {}  # goodput models fitted to jobs' reported step times

    # ------------------------------------------------------------ recovery
    def recover(self) -> None:
        """Rebuild the state machine from the catalog (at start, and after a crash)."""
        now = self.clock()
        self.state = st = SchedulerState(self.config.scheduler)
        with self.catalog.read() as conn:
            for row in conn.execute(sa.select(t.nodes).order_by(t.nodes.c.registered_at, t.nodes.c.name)):
                st.add_node(node_spec(row), row.last_heartbeat)
                node = st.cluster.node(row.name)
                if row.status != "up":
                    st.cluster.set_status(node, row.status)
            live = conn.execute(sa.select(t.jobs).where(t.jobs.c.accepted.is_(True),
                                                        t.jobs.c.state.not_in(TERMINAL))
                                .order_by(t.jobs.c.submit_time)).all()
            # every attempt row of an active job, open or not: an exit the agent reported but this
            # controller never applied must be applied now, not mistaken for a lost attempt
            open_rows = conn.execute(sa.select(t.attempts).join(t.jobs, sa.and_(
                t.jobs.c.id == t.attempts.c.job_id, t.jobs.c.attempt == t.attempts.c.attempt))
                .where(t.jobs.c.state.in_(ACTIVE))).all()
            deps = {d for r in live for d in json.loads(r.spec).get("depends_on", [])}
            done = conn.execute(sa.select(t.jobs).where(t.jobs.c.id.in_(deps), t.jobs.c.state.in_(TERMINAL))).all()
        placements: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for a in open_rows:
            placements[(a.job_id, a.attempt)].append(a)
        for row in [*done, *live]:
            job = job_from_row(row)
            rows = sorted(placements.get((job.id, job.attempt), []), key=lambda a: a.replica)
            if job.state in ACTIVE and not rows:  # a resize whose old attempt had not exited when we stopped
                log.warning("job %s is %s without attempt rows (a resize in flight); requeueing it", job.id, job.state)
                job.state = "pending"
            starts = [a.started_at for a in rows if a.started_at is not None]
            st.restore(job, [(a.node, tuple(json.loads(a.gpu_ids))) for a in rows],
                       started_at=max(starts) if starts and job.state == "running" else None, now=now)
        log.info("recovered %d jobs (%d active) and %d nodes", len(st.jobs), len(st.active), len(st.cluster))

    # ---------------------------------------------------------------- tick
    def step(self) -> list[Decision]:
        """One tick: read inputs, run timers and a scheduling pass, write decisions; returns the decisions."""
        now = self.clock()
        st = self.state
        decisions: list[Decision] = []
        failed_submits: list[tuple[str, str]] = []
        with self.catalog.write() as conn:
            if self.lease is not None:
                self.lease.renew(conn, now)
            for spec in self.config.remote_nodes:  # the controller is the agent of remote capacity
                register_node(conn, spec, now)
            self._read_nodes(conn, now)
            fire_due(conn, now)  # recurring jobs due now join this tick's new jobs
            failed_submits = self._read_new_jobs(conn)
            decisions += self._read_cancels(conn, now)
            decisions += self._read_requests(conn, now)
            decisions += self._read_attempts(conn, now)
            decisions += st.tick(now)
            decisions += st.schedule(now)
            self._write(conn, decisions, failed_submits, now)
            self._launch_resized(conn, now)
        st.transitions.clear()
        self.ticks += 1
        self._drive_remote(now)
        return decisions

    def run(self, stop: threading.Event | None = None, *, until: Callable[[], bool] | None = None,
            lease: Lease | None = None) -> None:
        """Take the controller lease (ControllerBusyError if another controller holds it), recover, then tick
        every ``tick_s`` until ``stop`` is set or ``until()`` is true; the lease is released on the way out (pass
        ``lease`` when the caller took it already)."""
        stop = stop or threading.Event()
        if lease is None:
            lease = Lease(self.catalog, self.config.lease_s)
            lease.acquire(self.clock())
        self.lease = lease
        try:
            self.recover()
            while not stop.is_set():
                started = time.monotonic()
                self.step()
                if until is not None and until():
                    return
                stop.wait(max(0.0, self.config.tick_s - (time.monotonic() - started)))
        finally:
            self.lease = None
            try:
                lease.release()
            except Exception:  # never hide why the loop ended; the lease then expires after lease_s
                log.exception("could not release the controller lease")

    # --------------------------------------------------------------- inputs
    def _read_nodes(self, conn: Connection, now: float) -> None:
        st = self.state
        for row in conn.execute(sa.select(t.nodes)):
            if row.name not in st.cluster.by_name:
                st.add_node(node_spec(row), row.last_heartbeat)
            node = st.cluster.node(row.name)
            if row.last_heartbeat > node.last_heartbeat:
                st.heartbeat(row.name, row.last_heartbeat, utilization=row.utilization,
                             cached=frozenset(json.loads(row.cached)))
            wants = "draining" if row.drain_requested else "up"
            if node.status in ("up", "draining") and node.status != wants:
                st.drain(row.name, drained=row.drain_requested)

    def _read_new_jobs(self, conn: Connection) -> list[tuple[str, str]]:
        failed = []
        for row in conn.execute(sa.select(t.jobs).where(t.jobs.c.accepted.is_(False))
                                .order_by(t.jobs.c.submit_time)):
            try:
                spec = JobSpec.from_dict(json.loads(row.spec))
                self.state.submit(spec, row.submit_time, job_id=row.id, cid=f"submit-{row.id}")
            except (SchedError, ValueError) as exc:
                failed.append((row.id, str(exc)))
        return failed

    def _read_cancels(self, conn: Connection, now: float) -> list[Decision]:
        out: list[Decision] = []
        q = sa.select(t.jobs.c.id).where(t.jobs.c.cancel_requested.is_(True), t.jobs.c.state.not_in(TERMINAL))
        for (job_id,) in conn.execute(q):
            job = self.state.jobs.get(job_id)
            if job is not None and job.state not in TERMINAL:
                out += self.state.cancel(job_id, now, "cancelled by user", cid=f"cancel-{job_id}")
        return out

    def _read_requests(self, conn: Connection, now: float) -> list[Decision]:
        """Act on pending restart and evacuation requests (filed by the watcher or an operator)."""
        out: list[Decision] = []
        q = sa.select(t.requests).where(t.requests.c.state == "pending").order_by(t.requests.c.id)
        for req in conn.execute(q).all():
            cid = f"request-{req.id}"
            state, outcome = "done", ""
            if req.kind == "restart":
                job = self.state.jobs.get(req.target)
                if job is None or job.state not in ACTIVE:
                    state, outcome = "refused", f"job {req.target} is {job.state if job else 'unknown'}, not running"
                else:
                    attempt = job.attempt
                    out += self.state.restart(req.target, now, f"restart requested: {req.reason}", cid=cid)
                    outcome = f"attempt {attempt} stopped; job is {job.state} ({job.reason})"
            elif req.kind == "evacuate":
                if req.target not in self.state.cluster.by_name:
                    state, outcome = "refused", f"node {req.target} is unknown"
                else:
                    conn.execute(t.nodes.update().where(t.nodes.c.name == req.target).values(drain_requested=True))
                    moved = self.state.evacuate(req.target, now, req.reason, cid=cid)
                    out += moved
                    outcome = f"node drained; {len(moved)} job(s) requeued: {' '.join(d.job_id for d in moved)}"
            else:
                state, outcome = "refused", f"unknown request kind {req.kind!r}"
            conn.execute(t.requests.update().where(t.requests.c.id == req.id).values(
                state=state, outcome=outcome[:2000], done_at=now))
        return out

    def _read_attempts(self, conn: Connection, now: float) -> list[Decision]:
        """Apply agents' attempt reports (rows whose state differs from what the controller acked)."""
        rows = conn.execute(sa.select(t.attempts).where(t.attempts.c.state != t.attempts.c.acked)).all()
        by_attempt: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for r in rows:
            by_attempt[(r.job_id, r.attempt)].append(r)
        out: list[Decision] = []
        for (job_id, attempt), changed in sorted(by_attempt.items()):
            every = conn.execute(sa.select(t.attempts).where(t.attempts.c.job_id == job_id,
                                                             t.attempts.c.attempt == attempt)).all()
            out += self._apply_attempt(job_id, attempt, every, now)
            for r in changed:
                conn.execute(t.attempts.update().where(
                    t.attempts.c.job_id == job_id, t.attempts.c.attempt == attempt,
                    t.attempts.c.replica == r.replica).values(acked=r.state))
        return out

    def _apply_attempt(self, job_id: str, attempt: int, rows: Sequence[Any], now: float) -> list[Decision]:
        st, cid = self.state, f"{job_id}.{attempt}"
        self._fit_goodput(job_id, rows)
        states = [r.state for r in rows]
        steps = [r.resumed_step for r in rows if r.resumed_step is not None]
        if all(s in ("running", "exited") for s in states):
            step = max(steps) if steps else None
            if not st.replica_started(job_id, attempt, now, resumed_step=step, cid=cid) and step is not None:
                st.note_resumed(job_id, attempt, step, now, cid=cid)
        if "lost" in states:
            return st.mark_lost(job_id, attempt, now, "executor lost the job", cid=cid)
        codes = [r.exit_code for r in rows if r.state == "exited"]
        failed = [c for c in codes if c != 0]
        if failed:
            out = st.finished(job_id, attempt, now, failed[0], reason=f"exit code {failed[0]}", cid=cid)
            job = st.jobs.get(job_id)
            if len(rows) > 1 and job is not None:  # stop the gang's other replicas
                out.append(PreemptDecision(job_id, attempt, job.spec.grace_s, "a replica failed"))
            return out
        if len(codes) == len(rows):
            return st.finished(job_id, attempt, now, 0, cid=cid)
        return []

    def _fit_goodput(self, job_id: str, rows: Sequence[Any]) -> None:
        """Feed a running resizable job's reported step time and gradient noise scale (the agent's ``usage``: median
        seconds per step, samples per GPU, ``phi``) to its goodput model and refit it; ``pollux`` then sizes the job
        (and chooses its batch) by what it measured."""
        job = self.state.jobs.get(job_id)
        if job is None or not job.spec.resizable:
            return
        for r in rows:
            try:
                usage = json.loads(r.usage or "{}")
            except ValueError:
                continue
            seconds, local = usage.get("step_seconds"), usage.get("local_batch")
            key = (job_id, r.attempt, r.replica)
            if r.state != "running" or not seconds or not local or self._fed.get(key) == usage.get("steps"):
                continue
            self._fed[key] = usage.get("steps")
            model = self.fitted.get(job_id)
            if model is None:
                lo, hi = job.spec.batch_range or (max(1, int(local * max(1, job.spec.gpus))),) * 2
                model = self.fitted[job_id] = GoodputModel(base_batch=job.spec.batch_size or lo, min_batch=lo,
                                                           max_batch=hi)
            model.report(max(1, job.spec.gpus), len({x.node for x in rows}), float(local), float(seconds))
            phi = usage.get("noise_scale")
            if isinstance(phi, (int, float)) and phi >= 0:
                model.report_noise_scale(float(phi))
            model.fit()
            if self.config.goodput_from_reports:
                self.state.models[job_id] = model

    # -------------------------------------------------------------- outputs
    def _insert_attempt(self, conn: Connection, d: StartDecision | ResizeDecision, now: float) -> None:
        job = self.state.jobs[d.job_id]
        attempt = d.attempt if isinstance(d, StartDecision) else d.new_attempt
        for replica, ((_, ids), name) in enumerate(zip(d.placement, d.nodes, strict=True)):
            conn.execute(t.attempts.insert().values(
                job_id=d.job_id, attempt=attempt, replica=replica, node=name,
                executor=job.spec.executor, gpu_ids=json.dumps(list(ids)), state="assigned",
                acked="assigned", stop_requested=False, stop_reason="", grace_s=job.spec.grace_s,
                usage="{}", created_at=now))

    def _launch_resized(self, conn: Connection, now: float) -> None:
        """Create the next attempt of each resized job once its old attempt has exited (it checkpoints on the
        way out, and the next attempt resumes from that checkpoint at the new size)."""
        for job_id, d in list(self.resizing.items()):
            job = self.state.jobs.get(job_id)
            if job is None or job.attempt != d.new_attempt or job.state not in ACTIVE:
                del self.resizing[job_id]  # cancelled, failed or preempted meanwhile
                continue
            q = sa.select(t.attempts.c.state).where(t.attempts.c.job_id == job_id, t.attempts.c.attempt == d.attempt)
            if any(state in t.ATTEMPT_OPEN for (state,) in conn.execute(q)):
                continue
            self._insert_attempt(conn, d, now)
            del self.resizing[job_id]

    def _write(self, conn: Connection, decisions: list[Decision], failed: list[tuple[str, str]], now: float) -> None:
        st = self.state
        for d in decisions:
            if isinstance(d, StartDecision):
                job = st.jobs[d.job_id]
                if job.spec.resizable:  # the policy may have sized it: agents launch what the row says
                    conn.execute(t.jobs.update().where(t.jobs.c.id == d.job_id)
                                 .values(spec=json.dumps(_launch_spec(job.spec, job.batch_size))))
                self._insert_attempt(conn, d, now)
            elif isinstance(d, ResizeDecision):
                job = st.jobs[d.job_id]
                conn.execute(t.attempts.update().where(
                    t.attempts.c.job_id == d.job_id, t.attempts.c.attempt == d.attempt,
                    t.attempts.c.state.in_(t.ATTEMPT_OPEN)).values(stop_requested=True, stop_reason=d.reason,
                                                                  grace_s=d.grace_s))
                conn.execute(t.jobs.update().where(t.jobs.c.id == d.job_id)
                             .values(spec=json.dumps(_launch_spec(job.spec, d.batch_size))))
                self.resizing[d.job_id] = d
            else:
                lost = d.reason.startswith("node ")
                q = t.attempts.update().where(t.attempts.c.job_id == d.job_id, t.attempts.c.attempt == d.attempt,
                                              t.attempts.c.state.in_(t.ATTEMPT_OPEN))
                values: dict[str, Any] = dict(stop_requested=True, stop_reason=d.reason, grace_s=d.grace_s)
                if lost:
                    values.update(state="lost", acked="lost", ended_at=now)
                conn.execute(q.values(**values))
        for job_id, reason in failed:
            conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(
                accepted=True, state="failed", reason=reason, finish_time=now, updated_at=now))
            conn.execute(t.events.insert().values(job_id=job_id, from_state="pending", to_state="failed",
                                                  reason=reason, correlation_id=f"submit-{job_id}", at=now))
        if st.transitions:
            conn.execute(t.events.insert(), [dict(job_id=x.job_id, from_state=x.from_state or "-",
                                                  to_state=x.to_state, reason=x.reason[:2000],
                                                  correlation_id=x.correlation_id, at=x.at)
                                             for x in st.transitions])
        for job_id in dict.fromkeys(x.job_id for x in st.transitions):
            job = st.jobs[job_id]
            conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(accepted=True, **job_values(job, now)))
        for node in st.cluster.nodes:
            conn.execute(t.nodes.update().where(t.nodes.c.name == node.spec.name, t.nodes.c.status != node.status)
                         .values(status=node.status, reason=f"{node.status} since "
                                 f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}"))

    # --------------------------------------------------------- remote executors
    def _executor(self, name: str) -> Executor:
        if name not in self.executors:
            self.executors[name] = get_executor(name, **self.config.executor_options.get(name, {}))
        return self.executors[name]

    def _drive_remote(self, now: float) -> None:
        """Launch, poll and stop attempts of non-local executors (Slurm, Ray, Kubernetes)."""
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.attempts).where(t.attempts.c.executor != "local",
                                                            t.attempts.c.state.in_(t.ATTEMPT_OPEN))).all()
        for row in rows:
            job = self.state.jobs.get(row.job_id)
            if job is None:
                continue
            ex = self._executor(row.executor)
            update = ex.drive(row, job.spec, now)
            if update:
                with self.catalog.write() as conn:
                    conn.execute(t.attempts.update().where(
                        t.attempts.c.job_id == row.job_id, t.attempts.c.attempt == row.attempt,
                        t.attempts.c.replica == row.replica).values(**update))


BATCH_VAR = "GRANARY_GLOBAL_BATCH_SIZE"


def _launch_spec(spec: JobSpec, batch_size: int | None) -> dict[str, Any]:
    """The spec the agent launches: a job that names a batch range also gets the global batch size the policy
    chose, as ``GRANARY_GLOBAL_BATCH_SIZE`` in its environment (the reference trainer splits it over its ranks)."""
    out = spec.to_dict()
    if spec.batch_size is not None and batch_size is not None:
        out["env"] = {**out["env"], BATCH_VAR: str(int(batch_size))}
    return out
