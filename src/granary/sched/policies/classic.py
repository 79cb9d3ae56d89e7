"""Classic queue disciplines: FIFO, priority with aging, shortest-job-first, EASY backfill."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from granary.sched.model import Job
from granary.sched.policies import register
from granary.sched.policies.base import Policy

if TYPE_CHECKING:
    from granary.sched.state import SchedulerState


@register
class FifoPolicy(Policy):
    """Strict first-in first-out: nothing overtakes the head of the queue (no backfill)."""

    name = "fifo"
    backfill = False

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        return (job.submit_time,)


@register
class PriorityPolicy(Policy):
    """Highest priority first; waiting raises priority by ``aging_per_hour`` per hour (no starvation).

    The effective priority ``p + a * (now - submit)`` orders jobs exactly like ``a * submit - p``, so the
    key never changes while a job waits. With ``preempt``, a job whose effective priority exceeds a
    running job's by more than ``preempt_margin`` preempts it.

    Args:
        aging_per_hour: priority points gained per hour of waiting.
        preempt: allow preemption of lower-priority running jobs.
        preempt_margin: priority points needed to preempt (hysteresis).
    """

    name = "priority"

    def __init__(self, *, aging_per_hour: float = 1.0, preempt: bool = True, preempt_margin: float = 1.0) -> None:
        if aging_per_hour < 0 or preempt_margin < 0:
            raise ValueError("aging_per_hour and preempt_margin must be >= 0")
        self.aging_per_s = aging_per_hour / 3600.0
        self.preemptive = preempt
        self.margin = preempt_margin

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        return (self.aging_per_s * job.submit_time - job.spec.priority, job.submit_time)

    def rank(self, job: Job) -> tuple[float, ...]:
        return (job.key[0],)

    def may_preempt(self, state: SchedulerState, head: Job, victim: Job, now: float) -> bool:
        return victim.key[0] - head.key[0] > self.margin and super().may_preempt(state, head, victim, now)


@register
class SjfPolicy(Policy):
    """Shortest job first by the job's duration estimate (jobs without one go last), with backfill."""

    name = "sjf"

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        est = job.spec.duration_estimate_s
        return (est if est is not None else math.inf, job.submit_time)


@register
class EasyBackfillPolicy(Policy):
    """FIFO with EASY backfill: the head gets a reservation; later jobs may start only if they end before
    it (by their estimate) or use GPUs the head will not need. Large gangs never starve behind small jobs.
    """

    name = "easy"
    reserve = True

    def __init__(self, *, backfill_depth: int = 32) -> None:
        if backfill_depth < 1:
            raise ValueError(f"backfill_depth must be >= 1, got {backfill_depth}")
        self.backfill_depth = backfill_depth

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        return (job.submit_time,)
