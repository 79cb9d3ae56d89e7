"""The policy interface and the shared scheduling pass (start what fits, backfill, reserve, preempt)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, ClassVar

from granary.sched.model import Decision, Job

if TYPE_CHECKING:
    from granary.sched.state import SchedulerState


class Policy:
    """Orders pending jobs and decides what starts and what is preempted.

    A policy is a key function plus a few switches; :meth:`schedule` is the shared pass. Keys are
    tuples of numbers, smaller first, and must not change while a job waits unless :meth:`review_at`
    asks for a review at the moment they change (Tiresias demotion, starvation promotion).

    Attributes:
        backfill: start a later job when the head does not fit.
        reserve: EASY backfill: a later job may start only if it does not delay the head's reservation.
        preemptive: stop running jobs whose rank is worse than the head's when the head does not fit.
        backfill_depth: jobs looked at per shape group when backfilling under a reservation.
        max_preemptions_per_pass: upper bound on preemptions in one pass (limits thrashing).
        min_run_s: a job that started less than this ago is not preempted (limits thrashing).
    """

    name: ClassVar[str] = ""
    backfill: bool = True
    reserve: bool = False
    preemptive: bool = False
    backfill_depth: int = 32
    max_preemptions_per_pass: int = 64
    min_run_s: float = 0.0

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        """The job's order in the queue (smaller runs first)."""
        raise NotImplementedError

    def rank(self, job: Job) -> tuple[float, ...]:
        """The part of the key that decides preemption: a job may preempt only jobs of a worse rank."""
        return job.key[:1]

    def group_of(self, job: Job) -> Hashable:
        """Which queue group the job joins (jobs of a group must all fit or all not fit)."""
        return job.spec.shape

    def review_at(self, state: SchedulerState, job: Job, now: float) -> float | None:
        """When the job's key may change next (None: never)."""
        return None

    def review(self, state: SchedulerState, job: Job, now: float) -> None:
        """Update policy fields of a job at a review (before its key is recomputed)."""

    def admissible(self, state: SchedulerState, job: Job) -> bool:
        """Whether quotas allow the job to start now."""
        return True

    def admits_all(self) -> bool:
        """True when :meth:`admissible` cannot refuse a job (a pass then skips asking, job by job)."""
        return type(self).admissible is Policy.admissible

    def pick(self, state: SchedulerState, candidates: list[Job]) -> Job:
        """Choose which of the fitting group heads starts next."""
        return min(candidates, key=lambda j: j.key)

    # ------------------------------------------------------------ the pass
    def schedule(self, state: SchedulerState, now: float) -> list[Decision]:
        """Start jobs that fit in policy order; then, if preemptive, make room for the head."""
        out: list[Decision] = []
        self._pass = object()  # identifies this pass (policies may cache per pass)
        budget = self.max_preemptions_per_pass
        while True:
            self._start_fitting(state, now, out)
            if not self.preemptive or budget <= 0 or not state.queue:
                return out
            n = self._preempt_for_head(state, now, out)
            if n == 0:
                return out
            budget -= n

    def _start_fitting(self, state: SchedulerState, now: float, out: list[Decision]) -> None:
        queue, cluster = state.queue, state.cluster
        if not queue or (cluster.free_gpus == 0 and not state.zero_gpu_pending()):
            return
        heads = dict(queue.heads())
        fits: dict[Hashable, bool] = {}
        admit = None if self.admits_all() else self.admissible
        while heads:
            head = min(heads.values(), key=lambda j: j.key)
            fitting = []
            for job in heads.values():
                shape = job.spec.shape
                ok = fits.get(shape)
                if ok is None:
                    ok = fits[shape] = cluster.fits(job.spec)
                if ok and (admit is None or admit(state, job)):
                    fitting.append(job)
            if not fitting:
                return
            job = self.pick(state, fitting)
            if job is not head and head not in fitting:
                if not self.backfill:
                    return
                if self.reserve:
                    self._backfill_reserved(state, now, out, head)
                    return
            group = self.group_of(job)
            decision = state.start(job, now)
            if decision is None:
                del heads[group]  # fits() said yes but placement found no nodes (labels, CPUs): skip the group
                continue
            out.append(decision)
            fits = {k: v for k, v in fits.items() if not v}  # resources shrank: re-check what fitted
            nxt = queue.head(group) if group in queue.groups else None
            if nxt is None:
                del heads[group]
            else:
                heads[group] = nxt

    def _shadow(self, state: SchedulerState, head: Job, now: float) -> tuple[float, int]:
        """EASY: when enough GPUs free up for the head (by running jobs' estimates), and the spare GPUs then."""
        memo = self.__dict__.get("_shadow_memo")
        if memo is not None and memo[0] == state.changes:
            ends = memo[1]
        else:  # absolute end times do not move while the set of running jobs stays the same
            ends = []
            for job in state.active.values():
                est = job.spec.duration_estimate_s
                if est is None:
                    continue
                began = job.started_at if job.started_at is not None else now
                ends.append((began + est - job.run_s, job.gpus))
            ends.sort()
            self._shadow_memo = (state.changes, ends)
        avail = state.cluster.free_gpus
        for t, g in ends:
            t = max(t, now)
            avail += g
            if avail >= head.gpus:
                return t, avail - head.gpus
        return math.inf, 0

    def _backfill_reserved(self, state: SchedulerState, now: float, out: list[Decision], head: Job) -> None:
        if self.__dict__.get("_bf_memo") == (state.changes, head.id):
            return  # nothing changed since the last pass found nothing to backfill (time only shrinks windows)
        started = len(out)
        shadow, extra = self._shadow(state, head, now)
        candidates: list[Job] = []
        for group, job in list(state.queue.heads()):
            if job is not head and job.gpus <= state.cluster.free_gpus:
                candidates.extend(j for j in state.queue.ordered(group, self.backfill_depth) if j is not head)
        candidates.sort(key=lambda j: j.key)
        for job in candidates:
            est = job.spec.duration_estimate_s
            ends_in_time = est is not None and now + est <= shadow
            if not ends_in_time and job.gpus > extra:
                continue
            if not state.cluster.fits(job.spec) or not self.admissible(state, job):
                continue
            decision = state.start(job, now)
            if decision is not None:
                out.append(decision)
                if not ends_in_time:
                    extra -= job.gpus
        if len(out) == started:
            self._bf_memo = (state.changes, head.id)

    def _preempt_for_head(self, state: SchedulerState, now: float, out: list[Decision]) -> int:
        """Preempt the fewest worse-ranked jobs that make room for the best waiting job."""
        memo = self.__dict__.get("_memo")
        if memo is not None and memo[0] == state.changes and now < memo[1]:
            return 0  # nothing changed since the last attempt failed
        self._retry_at = math.inf
        target = self.preemption_target(state, now)
        plan = plan_preemption(state, target[0], target[1]) if target is not None else []
        if not plan:
            self._memo = (state.changes, self._retry_at)
            return 0
        head = target[0]  # type: ignore[index]
        for job in plan:
            out.append(state.preempt(job, now, f"preempted for {head.id} ({self.name})"))
        # Start the head on the room just made: left to the next round's pick, a policy whose pick differs from
        # its preemption target (fair share) could restart a victim instead and preempt it again, round after round.
        decision = state.start(head, now)
        if decision is not None:
            out.append(decision)
        return len(plan)

    def preemption_target(self, state: SchedulerState, now: float) -> tuple[Job, list[Job]] | None:
        """The job to make room for and the jobs that may be preempted for it, worst first."""
        heads = [j for _, j in state.queue.heads() if self.admissible(state, j)]
        if not heads:
            return None
        head = min(heads, key=lambda j: j.key)
        rank = self.rank(head)
        candidates = []
        r, nodes = head.spec.gpus_per_replica, state.cluster.nodes
        room: dict[int, int] = {}
        enough = 0
        for job in state.victims():
            if not rank < self.rank(job):
                break
            if not self.may_preempt(state, head, job, now):
                continue
            candidates.append(job)
            for i, ids in job.placement or ():  # stop once enough nodes could host a replica
                before = room.get(i, nodes[i].free_gpus)
                room[i] = before + len(ids)
                if r and before < r <= room[i]:
                    enough += 1
            if enough >= head.spec.replicas:
                break
        return (head, candidates) if candidates else None

    def may_preempt(self, state: SchedulerState, head: Job, victim: Job, now: float) -> bool:
        """Whether ``head`` may take ``victim``'s resources (quota rules, minimum run time)."""
        started = victim.started_at
        if started is None or now - started >= self.min_run_s:
            return True
        self._retry_at = min(self.__dict__.get("_retry_at", math.inf), started + self.min_run_s)
        return False


def plan_preemption(state: SchedulerState, head: Job, candidates: list[Job]) -> list[Job]:
    """Choose victims among ``candidates`` (worst first) so that every replica of ``head`` fits.

    Replica by replica, the node that needs the fewest preempted GPUs wins (a node with room costs
    nothing). Returns [] when the candidates cannot make room.
    """
    spec, cluster = head.spec, state.cluster
    r = spec.gpus_per_replica
    if r == 0:
        return []
    on_node: dict[int, list[tuple[Job, int]]] = {}
    for job in candidates:
        held: dict[int, int] = {}  # a job's replicas can share a node: one entry per node, GPUs summed
        for i, ids in job.placement or ():
            held[i] = held.get(i, 0) + len(ids)
        for i, n in held.items():
            if n > 0:  # preempting a job that holds no GPU here frees nothing
                on_node.setdefault(i, []).append((job, n))
    nodes = cluster.nodes
    free: dict[int, int] = {}
    for f in range(r, len(cluster.by_free)):
        for i in cluster.by_free[f]:
            free[i] = f
    for i in on_node:
        if nodes[i].status == "up":
            free[i] = nodes[i].free_gpus
    selector = spec.node_selector.items()
    eligible = [i for i in free if all(nodes[i].spec.labels.get(k) == v for k, v in selector)]
    taken: set[str] = set()
    plan: list[Job] = []
    for _ in range(spec.replicas):
        best: tuple[int, int, list[Job]] | None = None
        for i in eligible:
            f, cost, chosen = free[i], 0, []
            for job, _n in on_node.get(i, ()) if f < r else ():
                if job.id in taken:
                    continue
                chosen.append(job)
                cost += job.gpus
                f += _n
                if f >= r:
                    break
            if f >= r and (best is None or cost < best[0]):
                best = (cost, i, chosen)
                if cost == 0:
                    break
        if best is None:
            return []
        _, i, chosen = best
        for job in chosen:
            taken.add(job.id)
            plan.append(job)
            for j, ids in job.placement or ():
                if j in free:
                    free[j] += len(ids)
        free[i] -= r
    return plan
