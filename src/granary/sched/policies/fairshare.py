"""Fair share across tenants with guaranteed and borrowable quotas, reclaiming borrowed GPUs by preemption."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

from granary.sched.model import Job
from granary.sched.policies import register
from granary.sched.policies.base import Policy

if TYPE_CHECKING:
    from granary.sched.state import SchedulerState


@register
class FairSharePolicy(Policy):
    """Tenants share the cluster in proportion to their weights, like Kueue cohorts.

    Each tenant has a guaranteed (nominal) number of GPUs: ``quotas[tenant]`` when given, else its
    weighted share of the cluster among the tenants seen so far. Idle guaranteed GPUs may be borrowed,
    up to ``borrow_limit[tenant]`` GPUs above the guarantee (unlimited when absent). The next job comes
    from the tenant with the lowest usage/guarantee ratio (FIFO within a tenant). When a tenant that is
    below its guarantee cannot start its job, jobs of tenants above their guarantee are preempted,
    newest first, until it fits: borrowed capacity is always reclaimable, guaranteed capacity never is.

    Args:
        quotas: guaranteed GPUs per tenant.
        borrow_limit: at most this many GPUs above the guarantee per tenant.
        weights: share weights per tenant (default 1).
        reclaim: preempt borrowers to give a tenant its guarantee back.
    """

    name = "fairshare"

    def __init__(self, *, quotas: Mapping[str, float] | None = None, borrow_limit: Mapping[str, float] | None = None,
                 weights: Mapping[str, float] | None = None, reclaim: bool = True) -> None:
        for label, m in (("quotas", quotas), ("borrow_limit", borrow_limit), ("weights", weights)):
            for tenant, v in (m or {}).items():
                if v < 0:
                    raise ValueError(f"{label}[{tenant!r}] must be >= 0, got {v}")
        self.quotas = dict(quotas or {})
        self.borrow_limit = dict(borrow_limit or {})
        self.weights = dict(weights or {})
        self.preemptive = reclaim
        self.tenants: set[str] = set(self.quotas)
        self._weight_sum = 0.0
        self._quota_sum = 0.0
        self._guarantees_total = -1
        self._guarantees: dict[str, float] = {}

    def group_of(self, job: Job) -> Hashable:
        return (job.spec.tenant, job.spec.shape)

    def key(self, job: Job, now: float) -> tuple[float, ...]:
        tenant = job.spec.tenant
        if tenant not in self.tenants:
            self.tenants.add(tenant)
            self._weight_sum = 0.0
        return (job.submit_time,)

    def guaranteed(self, state: SchedulerState, tenant: str) -> float:
        """GPUs guaranteed to ``tenant`` now (memoised until the tenants or the cluster's size change)."""
        if tenant in self.quotas:
            return self.quotas[tenant]
        total = state.cluster.total_gpus
        if not self._weight_sum or self._guarantees_total != total:
            self._weight_sum = sum(self.weights.get(t, 1.0) for t in self.tenants if t not in self.quotas)
            self._quota_sum = sum(self.quotas.values())
            self._guarantees_total = total
            self._guarantees = {}
        share = self._guarantees.get(tenant)
        if share is None:
            spare = max(0.0, total - self._quota_sum)
            share = self._guarantees[tenant] = spare * self.weights.get(tenant, 1.0) / max(self._weight_sum, 1e-9)
        return share

    def admits_all(self) -> bool:
        return not self.borrow_limit

    def admissible(self, state: SchedulerState, job: Job) -> bool:
        limit = self.borrow_limit.get(job.spec.tenant)
        if limit is None:
            return True
        return state.usage[job.spec.tenant] + job.gpus <= self.guaranteed(state, job.spec.tenant) + limit

    def _share(self, state: SchedulerState, tenant: str) -> float:
        return state.usage[tenant] / max(self.guaranteed(state, tenant), 1e-9)

    def pick(self, state: SchedulerState, candidates: list[Job]) -> Job:
        shares: dict[str, float] = {}  # one share per tenant, not per candidate

        def rank(job: Job) -> tuple[float, tuple[float, ...]]:
            tenant = job.spec.tenant
            share = shares.get(tenant)
            if share is None:
                share = shares[tenant] = self._share(state, tenant)
            return share, job.key

        return min(candidates, key=rank)

    def preemption_target(self, state: SchedulerState, now: float) -> tuple[Job, list[Job]] | None:
        """The most deprived tenant's head, if it is within its guarantee; victims: borrowers, newest first."""
        heads = [j for _, j in state.queue.heads()]
        if not self.admits_all():
            heads = [j for j in heads if self.admissible(state, j)]
        entitled = [j for j in heads
                    if state.usage[j.spec.tenant] + j.gpus <= self.guaranteed(state, j.spec.tenant)]
        if not entitled:
            return None
        head = self.pick(state, entitled)
        usage = Counter(state.usage)
        quota = {t: self.guaranteed(state, t) for t in usage}
        borrowers = {t for t in usage if usage[t] > quota[t] and t != head.spec.tenant}
        borrowed = sum(usage[t] - quota[t] for t in borrowers)
        if borrowed + state.cluster.free_gpus < head.gpus:
            return None
        # newest first; per-tenant orders are built once per pass, and a bounded number is looked at
        if self.__dict__.get("_pool_pass") is not self._pass:
            self._pool: dict[str, list[Job]] = {}
            for job in sorted(state.active.values(), key=lambda j: (j.started_at or j.submit_time, j.id),
                              reverse=True):
                self._pool.setdefault(job.spec.tenant, []).append(job)
            self._pool_pass = self._pass
        limit, victims = 4 * head.gpus + 32, []
        pool: list[Job] = []
        for t in borrowers:
            live = [j for j in self._pool.get(t, ())[: 4 * limit] if j.id in state.active]
            pool.extend(live[:limit])
        pool.sort(key=lambda j: (j.started_at or j.submit_time, j.id), reverse=True)
        for job in pool:
            t = job.spec.tenant
            if usage[t] <= quota[t] or not self.may_preempt(state, head, job, now):
                continue  # only borrowed GPUs are reclaimed
            victims.append(job)
            usage[t] -= job.gpus
        return (head, victims) if victims else None
