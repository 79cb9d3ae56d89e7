"""The scheduler's pure state machine: events in (submit, start, exit, heartbeat, node loss), decisions out.

No processes, sockets or clocks: every method takes ``now``. The controller feeds it events read from the
catalog and persists what it returns; the simulator feeds it a trace. Both run the same code.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from granary.sched.cluster import Cluster
from granary.sched.errors import JobNotFoundError, TransitionError
from granary.sched.goodput import GoodputModel
from granary.sched.model import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    Decision,
    Job,
    JobSpec,
    NodeSpec,
    PreemptDecision,
    ResizeDecision,
    StartDecision,
    Transition,
)
from granary.sched.placement import get_placement
from granary.sched.policies import Policy, get_policy
from granary.sched.queue import PendingQueue

log = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class SchedulerConfig:
    """Knobs of the state machine.

    Attributes:
        policy: policy name (see ``granary.sched.policies.POLICIES``).
        policy_options: keyword arguments of the policy class.
        placement: placement strategy name (see ``granary.sched.placement.PLACEMENTS``).
        heartbeat_timeout_s: a node silent this long is marked down (None: never, as in the simulator).
        backoff_base_s: first retry delay; doubles per retry of the same cause.
        backoff_max_s: retry delay cap.
        drain_after_failures: drain a node after this many consecutive job failures on it (0: never).
        record: keep the transition log (the simulator turns it off for speed).
        max_busy_gpus: a cluster power cap as the GPUs that may run at once (None: no cap);
            :func:`granary.sched.power.gpus_under_cap` converts a cap in watts.
    """

    policy: str = "mlfq"
    policy_options: dict[str, Any] = field(default_factory=dict)
    placement: str = "topology"
    heartbeat_timeout_s: float | None = 10.0
    backoff_base_s: float = 5.0
    backoff_max_s: float = 600.0
    drain_after_failures: int = 3
    record: bool = True
    max_busy_gpus: int | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_timeout_s is not None and self.heartbeat_timeout_s <= 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {self.heartbeat_timeout_s}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("need 0 <= backoff_base_s <= backoff_max_s")
        if self.drain_after_failures < 0:
            raise ValueError(f"drain_after_failures must be >= 0, got {self.drain_after_failures}")
        if self.max_busy_gpus is not None and self.max_busy_gpus < 0:
            raise ValueError(f"max_busy_gpus must be >= 0, got {self.max_busy_gpus}")


class SchedulerState:
    """Jobs, nodes, the pending queue and timers; every state change goes through here.

    Args:
        config: the knobs.
        policy: a policy instance (default: built from ``config.policy``).
    """

    def __init__(self, config: SchedulerConfig | None = None, *, policy: Policy | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.policy = policy or get_policy(self.config.policy, **self.config.policy_options)
        self.place = get_placement(self.config.placement)
        self.cluster = Cluster()
        self.jobs: dict[str, Job] = {}
        self.queue = PendingQueue(self.policy.group_of)
        self.active: dict[str, Job] = {}
        self.usage: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.transitions: list[Transition] = []
        self._children: dict[str, set[str]] = {}
        self._victims: list[tuple[tuple[float, ...], int, int, Job]] = []
        self._timers: list[tuple[float, int, str, str, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self.models: dict[str, GoodputModel] = {}  # goodput models of elastic jobs (fed by the controller / simulator)
        self.changes = 0  # bumped whenever resources or the queue change (policies memoize on it)
        self._zero_gpu = 0

    # ----------------------------------------------------------------- nodes
    def add_node(self, spec: NodeSpec, now: float) -> None:
        """A node registered (or came back)."""
        self.cluster.add(spec, now)

    def heartbeat(self, name: str, now: float, *, utilization: float | None = None,
                  cached: frozenset[str] | None = None) -> None:
        """An agent reported in; a down node that reports comes back up."""
        node = self.cluster.node(name)
        node.last_heartbeat = now
        if utilization is not None:
            node.utilization = utilization
        if cached is not None:
            node.cached = cached
        if node.status == "down":
            self.cluster.set_status(node, "up")

    def drain(self, name: str, *, drained: bool = True) -> None:
        """Stop (or resume) placing new work on a node; running jobs finish normally."""
        node = self.cluster.node(name)
        if node.status != "down":
            self.cluster.set_status(node, "draining" if drained else "up")
        if not drained:
            node.recent_failures = 0

    def node_failed(self, name: str, now: float, reason: str, *, cid: str | None = None) -> list[Decision]:
        """A node is lost: mark it down and fail its jobs with cause ``node`` (retried on another node)."""
        node = self.cluster.node(name)
        self.cluster.set_status(node, "down")
        out: list[Decision] = []
        for job_id in sorted(node.jobs):
            job = self.jobs[job_id]
            out.append(PreemptDecision(job.id, job.attempt, 0.0, f"node {name} lost: {reason}"))
            self._fail(job, now, "node", f"node {name} lost: {reason}", cid)
        return out

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: JobSpec, now: float, *, job_id: str | None = None, cid: str | None = None) -> Job:
        """Add a job; it waits for its dependencies, then queues."""
        job_id = job_id or f"j{next(self._ids):06d}"
        job = Job(id=job_id, spec=spec, submit_time=now, pending_since=now)
        for dep in spec.depends_on:
            if dep not in self.jobs:
                raise JobNotFoundError(dep)
        self.jobs[job_id] = job
        self._record(job, "", "pending", "submitted", cid, now)
        for dep in spec.depends_on:
            parent = self.jobs[dep]
            if parent.state in ("failed", "cancelled"):
                self._finish(job, now, "cancelled", f"dependency {dep} {parent.state}", cid)
                return job
            if parent.state != "succeeded":
                job.blocked_on.add(dep)
                self._children.setdefault(dep, set()).add(job_id)
        if not job.blocked_on:
            self._enqueue(job, now)
        return job

    def cancel(self, job_id: str, now: float, reason: str = "cancelled by user", *,
               cid: str | None = None) -> list[Decision]:
        """Cancel a job; a running one is stopped (SIGTERM, grace period, SIGKILL)."""
        job = self.job(job_id)
        out: list[Decision] = []
        if job.state in ACTIVE:
            out.append(PreemptDecision(job.id, job.attempt, job.spec.grace_s, reason))
        self._finish(job, now, "cancelled", reason, cid)
        return out

    def job(self, job_id: str) -> Job:
        """The job with this id."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFoundError(job_id) from None

    def replica_started(self, job_id: str, attempt: int, now: float, *, resumed_step: int | None = None,
                        all_started: bool = True, cid: str | None = None) -> bool:
        """An executor reports the job's processes running (all of them, for a gang, when ``all_started``)."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state != "admitted":
            return False
        if resumed_step is not None:
            job.resumed_step = resumed_step
            job.resumed_attempt = attempt
        if not all_started:
            return True
        job.started_at = now
        if job.first_start is None:
            job.first_start = now
        why = "started" if resumed_step is None else f"started, resumed from step {resumed_step}"
        self._record(job, "admitted", "running", why, cid, now)
        job.state = "running"
        self._schedule_review(job, now)
        return True

    def note_resumed(self, job_id: str, attempt: int, step: int, now: float, *, cid: str | None = None) -> None:
        """A running job reported the checkpoint step it resumed from."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state != "running":
            return
        job.resumed_attempt = attempt
        if job.resumed_step == step:
            return
        job.resumed_step = step
        self._record(job, "running", "running", f"resumed from step {step}", cid, now)

    def finished(self, job_id: str, attempt: int, now: float, exit_code: int, *, reason: str = "",
                 cid: str | None = None) -> list[Decision]:
        """An executor reports that the job's attempt ended; stale reports (old attempts) are ignored."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state not in ACTIVE:
            log.debug("ignoring stale exit report for %s attempt %s", job_id, attempt)
            return []
        nodes = {self.cluster.nodes[i] for i, _ in job.placement or ()}
        if exit_code == 0:
            for node in nodes:
                node.recent_failures = 0
            self._finish(job, now, "succeeded", reason or "exit code 0", cid)
            return []
        self._fail(job, now, "job", reason or f"exit code {exit_code}", cid)
        limit = self.config.drain_after_failures
        for node in nodes:
            node.recent_failures += 1
            if limit and node.recent_failures >= limit and node.status == "up":
                log.warning("draining node %s after %d failed jobs in a row", node.spec.name, limit)
                self.cluster.set_status(node, "draining")
        return []

    def mark_lost(self, job_id: str, attempt: int, now: float, reason: str, *,
                  cid: str | None = None) -> list[Decision]:
        """The executor lost track of the attempt (e.g. Slurm node failure): retry under the node budget."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.state not in ACTIVE:
            return []
        self._fail(job, now, "node", reason, cid)
        return []

    def restart(self, job_id: str, now: float, reason: str, *, cause: str = "job",
                cid: str | None = None) -> list[Decision]:
        """Stop an active job and requeue it under its ``cause`` retry budget (the watcher asks for this when a
        job hangs, or ``cause="node"`` when its node is evacuated); it resumes from its latest checkpoint."""
        if cause not in ("job", "node"):
            raise ValueError(f"cause must be 'job' or 'node', got {cause!r}")
        job = self.job(job_id)
        if job.state not in ACTIVE:
            return []
        decision = PreemptDecision(job.id, job.attempt, job.spec.grace_s, reason)
        self._fail(job, now, cause, reason, cid)
        return [decision]

    def evacuate(self, name: str, now: float, reason: str, *, cid: str | None = None) -> list[Decision]:
        """Drain a node and move its jobs elsewhere now (retried under the node budget, from checkpoints)."""
        node = self.cluster.node(name)
        if node.status != "down":
            self.cluster.set_status(node, "draining")
        out: list[Decision] = []
        for job_id in sorted(node.jobs):
            out += self.restart(job_id, now, f"evacuated from {name}: {reason}", cause="node", cid=cid)
        return out

    def restore(self, job: Job, replicas: list[tuple[str, tuple[int, ...]]], *, started_at: float | None,
                now: float) -> None:
        """Re-insert a job read back from durable storage (controller recovery), in its stored state."""
        self.jobs[job.id] = job
        if job.state in TERMINAL:
            return
        if job.state in ACTIVE:
            placement = []
            for name, ids in replicas:
                node = self.cluster.node(name)
                placement.append((node.index, self.cluster.allocate_ids(node, job.spec, ids, job.id)))
            job.placement = tuple(placement)
            job.started_at = started_at
            self.active[job.id] = job
            self.usage[job.spec.tenant] += job.gpus
            job.key = self.policy.key(job, now)
            self._push_victim(job)
            if job.state == "running":
                self._schedule_review(job, now)
            elif job.spec.gang and job.spec.replicas > 1:
                self._timer(now + job.spec.gang_timeout_s, "gang", job)
            return
        job.state = "pending"
        for dep in job.spec.depends_on:
            parent = self.jobs.get(dep)
            if parent is not None and parent.state in ("failed", "cancelled"):
                self._finish(job, now, "cancelled", f"dependency {dep} {parent.state}", None)
                return
            if parent is not None and parent.state != "succeeded":
                job.blocked_on.add(dep)
                self._children.setdefault(dep, set()).add(job.id)
        if job.blocked_on:
            return
        if job.not_before > now:
            self._timer(job.not_before, "backoff", job)
        else:
            self._enqueue(job, now)

    # ------------------------------------------------------------ scheduling
    def schedule(self, now: float) -> list[Decision]:
        """One scheduling pass of the policy: starts and preemptions."""
        return self.policy.schedule(self, now)

    def tick(self, now: float) -> list[Decision]:
        """Fire due timers (backoff, reviews, gang timeouts) and heartbeat timeouts."""
        out: list[Decision] = []
        timeout = self.config.heartbeat_timeout_s
        if timeout is not None:
            for node in self.cluster.nodes:
                if node.status != "down" and now - node.last_heartbeat > timeout:
                    out += self.node_failed(node.spec.name, now, f"no heartbeat for {timeout:g} s")
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, job_id, stamp = heapq.heappop(self._timers)
            job = self.jobs[job_id]
            if self._stamp(job, kind) != stamp:
                continue
            out += self._fire(job, kind, now)
        return out

    def zero_gpu_pending(self) -> bool:
        """Whether some queued job needs no GPU (it may fit on a full GPU cluster)."""
        return self._zero_gpu > 0 and any(j.gpus == 0 for j in self.queue.jobs())

    def next_timer(self) -> float | None:
        """When the earliest pending timer fires (stale timers included; they are cheap no-ops)."""
        return self._timers[0][0] if self._timers else None

    def start(self, job: Job, now: float) -> StartDecision | None:
        """Admit a pending job onto nodes chosen by the placement strategy (policies call this)."""
        cap = self.config.max_busy_gpus
        if cap is not None and job.gpus and sum(self.usage.values()) + job.gpus > cap:
            return None  # the power cap: the job waits as if the cluster were full
        nodes = self.place(self.cluster, job.spec)
        if nodes is None:
            return None
        placement = tuple((i, self.cluster.allocate(self.cluster.nodes[i], job.spec, job.id)) for i in nodes)
        self.queue.discard(job)
        self.changes += 1
        job.placement = placement
        job.attempt += 1
        job.starved = False
        job.state = "admitted"
        self._record(job, "pending", "admitted", "placed", None, now)
        self.active[job.id] = job
        self.usage[job.spec.tenant] += job.gpus
        job.key = self.policy.key(job, now)
        self._push_victim(job)
        if job.spec.gang and job.spec.replicas > 1:
            self._timer(now + job.spec.gang_timeout_s, "gang", job)
        names = tuple(self.cluster.nodes[i].spec.name for i in nodes)
        return StartDecision(job.id, job.attempt, placement, names)

    def preempt(self, job: Job, now: float, reason: str) -> PreemptDecision:
        """Stop a running job so that a better one can run; it is requeued at once (policies call this)."""
        decision = PreemptDecision(job.id, job.attempt, job.spec.grace_s, reason)
        self._record(job, job.state, "preempted", reason, None, now)
        job.state = "preempted"
        self._stop(job, now)
        job.preemptions += 1
        self.counters["preemptions"] += 1
        self._requeue(job, now, "requeued after preemption", 0.0, None)
        return decision

    def resize(self, job: Job, gpus: int, now: float, *, batch_size: int | None = None,
               reason: str = "") -> ResizeDecision | None:
        """Move a running resizable job to ``gpus`` GPUs (policies call this); None when it cannot be placed.

        The running attempt is stopped (SIGTERM: the job checkpoints at a step boundary) and the next attempt is
        admitted on the new placement at once, so the GPUs it keeps are never handed to another job in between.
        When the new size does not fit, nothing changes.

        Raises:
            InvalidJobError: ``gpus`` lies outside the job's range (or the job is not resizable).
            TransitionError: the job is not running.
        """
        if job.state != "running":
            raise TransitionError(job.id, job.state, "admitted")
        old_spec, old_placement = job.spec, job.placement or ()
        new_spec = old_spec.resized(gpus, max(1, len(self.cluster.by_free) - 1))
        for i, ids in old_placement:
            self.cluster.release(self.cluster.nodes[i], old_spec, ids, job.id)
        nodes = self.place(self.cluster, new_spec)
        if nodes is None:
            for i, ids in old_placement:
                self.cluster.allocate_ids(self.cluster.nodes[i], old_spec, ids, job.id)
            return None
        for i, ids in old_placement:  # put the old allocation back so that _stop accounts and frees it once
            self.cluster.allocate_ids(self.cluster.nodes[i], old_spec, ids, job.id)
        self._stop(job, now)
        job.spec = new_spec
        placement = tuple((i, self.cluster.allocate(self.cluster.nodes[i], new_spec, job.id)) for i in nodes)
        why = reason or f"resized {old_spec.gpus} -> {gpus} GPUs"
        decision = ResizeDecision(job.id, job.attempt, placement, tuple(self.cluster.nodes[i].spec.name for i in nodes),
                                  gpus, batch_size, old_spec.grace_s, why)
        self._record(job, "running", "admitted", why, None, now)
        job.placement = placement
        job.attempt += 1
        job.state = "admitted"
        job.resizes += 1
        job.resized_at = now
        job.batch_size = batch_size
        self.counters["resizes"] += 1
        self.active[job.id] = job
        self.usage[job.spec.tenant] += job.gpus
        job.key = self.policy.key(job, now)
        self._push_victim(job)
        if new_spec.gang and new_spec.replicas > 1:
            self._timer(now + new_spec.gang_timeout_s, "gang", job)
        return decision

    def victims(self) -> Iterator[Job]:
        """Active jobs from the worst key to the best (lazy walk of a max-heap)."""
        heap = self._victims
        # Compact once a fifth of the entries are stale: a stale entry still costs the walk below a push and a
        # pop (compacting only at 2x the live entries made tiresias replays ~30% slower).
        if len(heap) > len(self.active) + len(self.active) // 4 + 64:
            heap[:] = [e for e in heap if e[2] == e[3].token and e[3].id in self.active]
            heapq.heapify(heap)
        if not heap:
            return
        frontier = [(heap[0][0], heap[0][1], 0)]
        while frontier:
            _, _, i = heapq.heappop(frontier)
            _, _, token, job = heap[i]
            if token == job.token and job.id in self.active:
                yield job
            for c in (2 * i + 1, 2 * i + 2):
                if c < len(heap):
                    heapq.heappush(frontier, (heap[c][0], heap[c][1], c))

    def attained(self, job: Job, now: float) -> float:
        """GPU-seconds the job has received so far, including the current run."""
        extra = (now - job.started_at) * job.gpus if job.started_at is not None else 0.0
        return job.attained_gpu_s + extra

    # -------------------------------------------------------------- internals
    def _enqueue(self, job: Job, now: float) -> None:
        self.changes += 1
        if job.gpus == 0:
            self._zero_gpu += 1
        job.key = self.policy.key(job, now)
        self.queue.push(job)
        self._schedule_review(job, now)

    def _schedule_review(self, job: Job, now: float) -> None:
        at = self.policy.review_at(self, job, now)
        if at is not None:  # strictly later than now, or float rounding could fire it forever
            self._timer(max(at, now + 1e-6 + abs(now) * 1e-12), "review", job)

    def _timer(self, at: float, kind: str, job: Job) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, job.id, self._stamp(job, kind)))

    @staticmethod
    def _stamp(job: Job, kind: str) -> tuple[Any, ...]:
        return (job.state, job.attempt, job.pending_since, job.key if kind == "review" else None)

    def _fire(self, job: Job, kind: str, now: float) -> list[Decision]:
        if kind == "backoff":
            self._enqueue(job, now)
        elif kind == "gang" and job.state == "admitted":
            self._record(job, "admitted", "pending", "gang timeout: not all replicas started", None, now)
            self._stop(job, now)
            self._requeue(job, now, "", 0.0, None, record=False)
            return [PreemptDecision(job.id, job.attempt, 0.0, "gang timeout")]
        elif kind == "review":
            self.policy.review(self, job, now)
            if job.state == "pending":
                self.queue.discard(job)
                self._enqueue(job, now)
            elif job.state in ACTIVE:
                job.key = self.policy.key(job, now)
                self._push_victim(job)
                self._schedule_review(job, now)
        return []

    def _push_victim(self, job: Job) -> None:
        job.token += 1
        neg = tuple(-x for x in job.key)
        heapq.heappush(self._victims, (neg, next(self._seq), job.token, job))

    def _stop(self, job: Job, now: float) -> None:
        """Release the job's resources and account its run time."""
        self.changes += 1
        if job.started_at is not None:
            dt = max(0.0, now - job.started_at)
            job.run_s += dt
            job.attained_gpu_s += dt * job.gpus
            job.last_run_s = dt
            job.started_at = None
        for i, ids in job.placement or ():
            self.cluster.release(self.cluster.nodes[i], job.spec, ids, job.id)
        job.placement = None
        if self.active.pop(job.id, None) is not None:
            self.usage[job.spec.tenant] -= job.gpus
        job.token += 1

    def _fail(self, job: Job, now: float, cause: str, reason: str, cid: str | None) -> None:
        self._stop(job, now)
        used = job.node_restarts if cause == "node" else job.job_restarts
        budget = job.spec.max_node_restarts if cause == "node" else job.spec.max_restarts
        if used >= budget:
            self._finish(job, now, "failed", f"{reason} (no {cause} retries left: {used}/{budget})", cid)
            return
        if cause == "node":
            job.node_restarts += 1
        else:
            job.job_restarts += 1
        self.counters[f"restarts_{cause}"] += 1
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** used)
        why = f"{reason}; retry {used + 1}/{budget} ({cause}) in {delay:g} s"
        self._requeue(job, now, why, delay, cid)

    def _requeue(self, job: Job, now: float, reason: str, delay: float, cid: str | None, *,
                 record: bool = True) -> None:
        if record:
            self._record(job, job.state, "pending", reason, cid, now)
        job.state = "pending"
        job.pending_since = now
        if delay > 0:
            job.not_before = now + delay
            self._timer(job.not_before, "backoff", job)
        else:
            self._enqueue(job, now)

    def _finish(self, job: Job, now: float, state: str, reason: str, cid: str | None) -> None:
        if job.state in TERMINAL:
            raise TransitionError(job.id, job.state, state)
        if job.state in ACTIVE:
            self._stop(job, now)
        self.queue.discard(job)
        self._record(job, job.state, state, reason, cid, now)
        job.state = state
        job.finish_time = now
        job.reason = reason
        for child_id in sorted(self._children.pop(job.id, ())):
            child = self.jobs[child_id]
            if child.state in TERMINAL:
                continue
            if state == "succeeded":
                child.blocked_on.discard(job.id)
                if not child.blocked_on:
                    self._enqueue(child, now)
            else:
                self._finish(child, now, "cancelled", f"dependency {job.id} {state}", cid)

    def _record(self, job: Job, src: str, dst: str, reason: str, cid: str | None, now: float) -> None:
        if src and src != dst and dst not in TRANSITIONS[src]:
            raise TransitionError(job.id, src, dst)
        job.reason = reason
        if self.config.record:
            self.transitions.append(Transition(job.id, src, dst, reason, cid or f"{job.id}.{job.attempt}", now))
