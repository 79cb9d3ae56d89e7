"""Multi-level feedback by attained GPU-time (Tiresias-style): no duration knowledge needed."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from granary.sched.model import ACTIVE, Job
from granary.sched.policies import register
from granary.sched.policies.base import Policy

if TYPE_CHECKING:
    from granary.sched.state import SchedulerState


@register
class MlfqPolicy(Policy):
    """Granary's default: least-attained-service queues with starvation guard, fair tie-breaks and backfill.

    A job starts in level 0 and drops a level each time the GPU-seconds it has received cross a
    threshold, so short jobs finish fast without anyone knowing durations (most jobs are short; the
    rare long ones carry most GPU-time). Within a level, the tenant using the fewest GPUs goes first,
    then the oldest job. A higher level preempts a lower one when the head does not fit (the preempted
    job checkpoints on SIGTERM and resumes later). A job that waited ``starve_factor`` times its last
    run (at least ``starve_min_s``) is promoted above every level and may preempt anything: this is the
    reservation that keeps large gangs from starving. Jobs that do not fit are overtaken (backfill).

    Args:
        thresholds_gpu_s: attained GPU-seconds at which a job drops to the next level (ascending).
        starve_factor: waiting this many times the last run time promotes a job.
        starve_min_s: minimum wait before promotion (also for jobs that never ran).
        tenant_fair: within a level, prefer the tenant that uses the fewest GPUs.
        min_run_s: a job runs at least this long before it can be preempted.
    """

    name = "mlfq"
    preemptive = True

    def __init__(self, *, thresholds_gpu_s: Sequence[float] = (1800.0, 28800.0, 230400.0),
                 starve_factor: float = 8.0, starve_min_s: float = 6 * 3600.0, tenant_fair: bool = True,
                 min_run_s: float = 300.0) -> None:
        thresholds = tuple(float(t) for t in thresholds_gpu_s)
        if any(t <= 0 for t in thresholds) or list(thresholds) != sorted(thresholds):
            raise ValueError(f"thresholds_gpu_s must be positive and ascending, got {thresholds}")
        if starve_factor <= 0 or starve_min_s <= 0:
            raise ValueError("starve_factor and starve_min_s must be > 0")
        self.thresholds = thresholds
        self.starve_factor = starve_factor
        self.starve_min_s = starve_min_s
        self.tenant_fair = tenant_fair
        if min_run_s < 0:
            raise ValueError(f"min_run_s must be >= 0, got {min_run_s}")
        self.min_run_s = min_run_s

    def group_of(self, job: Job) -> Hashable:
        return (job.spec.tenant, job.spec.shape) if self.tenant_fair else job.spec.shape

    def level(self, attained_gpu_s: float) -> int:
        """The queue level for an amount of received service."""
        return bisect_right(self.thresholds, attained_gpu_s)

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        if job.starved:
            return (-1.0, job.pending_since)
        attained = job.attained_gpu_s
        if job.started_at is not None:
            attained += (now - job.started_at) * job.gpus
        return (float(self.level(attained + 1e-6)), job.submit_time)

    def pick(self, state: SchedulerState, candidates: list[Job]) -> Job:
        if not self.tenant_fair:
            return min(candidates, key=lambda j: j.key)
        usage = state.usage
        return min(candidates, key=lambda j: (j.key[0], usage[j.spec.tenant], j.key[1]))

    def review_at(self, state: SchedulerState, job: Job, now: float) -> float | None:
        if job.state in ACTIVE:
            if job.started_at is None or not job.gpus:
                return None
            attained = state.attained(job, now) + 1e-6  # a job at a threshold has crossed it
            lvl = self.level(attained)
            if lvl >= len(self.thresholds):
                return None
            return now + (self.thresholds[lvl] - attained) / job.gpus
        if job.state == "pending" and not job.starved:
            return job.pending_since + max(self.starve_min_s, self.starve_factor * job.last_run_s)
        return None

    def review(self, state: SchedulerState, job: Job, now: float) -> None:
        if job.state == "pending":
            job.starved = True


@register
class TiresiasPolicy(MlfqPolicy):
    """Tiresias (NSDI'19) discretized 2D-LAS as published: two queues split at 1 GPU-hour, FIFO inside a
    queue, promotion after waiting ``starve_factor`` times the last run; no tenant tie-break."""

    name = "tiresias"

    def __init__(self, *, thresholds_gpu_s: Sequence[float] = (3600.0,), starve_factor: float = 8.0,
                 starve_min_s: float = 6 * 3600.0, min_run_s: float = 300.0) -> None:
        super().__init__(thresholds_gpu_s=thresholds_gpu_s, starve_factor=starve_factor,
                         starve_min_s=starve_min_s, tenant_fair=False, min_run_s=min_run_s)
