"""Co-adaptive, goodput-aware policy (Pollux-style): GPU counts and batch sizes chosen together, every round."""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from granary.sched.goodput import GoodputModel
from granary.sched.model import Decision, Job
from granary.sched.policies import register
from granary.sched.policies.mlfq import MlfqPolicy

if TYPE_CHECKING:
    from granary.sched.state import SchedulerState


def allowed_sizes(lo: int, hi: int, gpus_per_node: int) -> list[int]:
    """GPU counts a job may get: powers of two below a node, then whole nodes, within ``[lo, hi]`` (both kept)."""
    sizes = {lo, hi}
    k = 1
    while k < gpus_per_node:
        sizes.add(k)
        k *= 2
    sizes.update(range(gpus_per_node, hi + 1, gpus_per_node))
    return sorted(s for s in sizes if lo <= s <= hi)


@register
class PolluxPolicy(MlfqPolicy):
    """Allocates GPUs to maximise cluster goodput with fairness; resizes elastic jobs through their checkpoints.

    Every ``interval_s`` (and when jobs arrive or leave) a round runs:

    1. **Admission** in least-attained-service order (``mlfq``'s levels, starvation promotion and tenant
       tie-break; higher ``priority`` first): each job gets its smallest size (``min_gpus``; a fixed-size job its
       whole size) while GPUs and its tenant's quota last. Running jobs not admitted are preempted, unless they
       started less than ``min_run_s`` ago.
    2. **Growth**: the GPUs left go, a step at a time, to the job whose *fitness* rises most per GPU. Fitness is
       the p-norm of speedups ``(sum_j S_j^p)^(1/p)`` with ``S_j`` = goodput at the allocation (best batch size)
       over goodput as submitted; ``p = -1`` (as Pollux) favours the jobs that are furthest behind.
    3. **Anti-thrashing**: a running job keeps its size for ``min_resize_interval_s`` after a start or resize,
       and changes size only when the speedup gained within one such interval pays for ``restart_cost_s``.

    Args:
        interval_s: seconds between rounds.
        p: fairness exponent of the fitness (-1: harmonic; 1: total goodput; 0: geometric).
        min_resize_interval_s: a job's size is held at least this long.
        restart_cost_s: what one resize costs the job (stop, checkpoint, restart).
        quotas: the most GPUs each tenant's jobs may hold together (tenants not named: unlimited).
        hold_until_resumed: a restarted job keeps its size until it reported the step it resumed from (it is up
            and training); on a real cluster this keeps a slow start from being resized again before its first
            step. The simulator has no reports and leaves it off.
        **mlfq: ``MlfqPolicy``'s options (levels, starvation guard, ``min_run_s``).
    """

    name = "pollux"

    def __init__(self, *, interval_s: float = 60.0, p: float = -1.0, min_resize_interval_s: float = 600.0,
                 restart_cost_s: float = 60.0, quotas: dict[str, int] | None = None,
                 hold_until_resumed: bool = False,
                 thresholds_gpu_s: Sequence[float] = (1800.0, 28800.0, 230400.0), starve_factor: float = 8.0,
                 starve_min_s: float = 6 * 3600.0, min_run_s: float = 300.0) -> None:
        super().__init__(thresholds_gpu_s=thresholds_gpu_s, starve_factor=starve_factor, starve_min_s=starve_min_s,
                         tenant_fair=True, min_run_s=min_run_s)
        if interval_s <= 0 or min_resize_interval_s < 0 or restart_cost_s < 0:
            raise ValueError("need interval_s > 0, min_resize_interval_s >= 0 and restart_cost_s >= 0")
        if not math.isfinite(p) or p > 1:
            raise ValueError(f"p must be finite and <= 1, got {p}")
        if quotas and any(q < 0 for q in quotas.values()):
            raise ValueError(f"quotas must be >= 0, got {quotas}")
        self.interval_s = interval_s
        self.p = p
        self.min_resize_interval_s = min_resize_interval_s
        self.restart_cost_s = restart_cost_s
        self.quotas = dict(quotas or {})
        self.hold_until_resumed = hold_until_resumed
        self._next_round = -math.inf
        self._seen = -1
        self._ref: dict[str, int] = {}
        self._curves: dict[tuple[Any, ...], tuple[list[int], np.ndarray]] = {}
        self._priors: dict[str, GoodputModel] = {}

    # ------------------------------------------------------------- the model
    def _model(self, state: SchedulerState, job: Job) -> GoodputModel:
        model = state.models.get(job.id)
        if model is not None:
            return model
        if job.id not in self._priors:  # the prior before the job reports: its batch limits, default step model
            spec = job.spec
            lo, hi = spec.batch_range or (32, 32)
            self._priors[job.id] = GoodputModel(base_batch=spec.batch_size or 32, min_batch=lo, max_batch=hi)
        return self._priors[job.id]

    def curve(self, state: SchedulerState, job: Job, gpus_per_node: int) -> tuple[list[int], np.ndarray]:
        """(allowed sizes, speedup at each size) of a job."""
        ref = self._ref.setdefault(job.id, job.spec.gpus)
        lo, hi = job.spec.gpu_range
        model = self._model(state, job)
        key = (id(model), model.params, model.noise_scale, ref, lo, hi, gpus_per_node)  # a refit changes the curve
        cached = self._curves.get(key)
        if cached is None:
            if len(self._curves) > 100_000:  # refitted models leave stale entries behind
                self._curves.clear()
            sizes = allowed_sizes(lo, hi, gpus_per_node)
            cached = self._curves[key] = (sizes, np.maximum(model.speedups(sizes, gpus_per_node, ref), 1e-9))
        return cached

    def _utility(self, s: float) -> float:
        if self.p == 0:
            return math.log(s)
        return s**self.p if self.p > 0 else -(s**self.p)

    # ---------------------------------------------------------------- rounds
    def schedule(self, state: SchedulerState, now: float) -> list[Decision]:
        """A round when one is due, or when the cluster changed and GPUs are free for waiting jobs."""
        due = now >= self._next_round
        if not due and (not state.queue or state.cluster.free_gpus == 0 or self._seen == state.changes):
            return []
        if due:
            self._next_round = now + self.interval_s
        out = self._round(state, now)
        self._seen = state.changes
        return out

    def _order(self, state: SchedulerState, job: Job, now: float) -> tuple[float, ...]:
        if job.starved:
            return (-job.spec.priority, -1.0, 0.0, job.pending_since)
        level = float(self.level(state.attained(job, now) + 1e-6))
        return (-job.spec.priority, level, float(state.usage[job.spec.tenant]), job.submit_time)

    def _held(self, job: Job, now: float) -> bool:
        """Whether a running job must keep its size now (recently started or resized)."""
        since = job.resized_at if job.resized_at is not None else job.started_at
        if since is None:
            return job.state == "admitted"
        if self.hold_until_resumed and job.attempt > 1 and job.resumed_attempt < job.attempt:
            return True
        return now - since < max(self.min_resize_interval_s, 0.0) or (
            not job.spec.resizable and now - since < self.min_run_s)

    def _round(self, state: SchedulerState, now: float) -> list[Decision]:
        cluster = state.cluster
        gpn = max(1, len(cluster.by_free) - 1)
        budget = cluster.total_gpus
        running = list(state.active.values())
        pending = list(state.queue.jobs())
        target: dict[str, int] = {}
        tenant_use: Counter[str] = Counter()
        for job in running:
            if self._held(job, now) or (job.started_at is not None and now - job.started_at < self.min_run_s):
                target[job.id] = job.spec.gpus
                tenant_use[job.spec.tenant] += job.spec.gpus
                budget -= job.spec.gpus
        fixed = set(target)
        candidates = sorted((j for j in running + pending if j.id not in fixed),
                            key=lambda j: self._order(state, j, now))
        for job in candidates:
            need = job.spec.gpu_range[0]
            quota = self.quotas.get(job.spec.tenant)
            if need <= budget and (quota is None or tenant_use[job.spec.tenant] + need <= quota):
                target[job.id] = need
                tenant_use[job.spec.tenant] += need
                budget -= need
        budget = self._grow(state, [j for j in candidates if j.id in target and j.spec.resizable], target,
                            tenant_use, budget, gpn)
        return self._apply(state, now, running, candidates, target, gpn)

    def _grow(self, state: SchedulerState, jobs: list[Job], target: dict[str, int], tenant_use: Counter[str],
              budget: int, gpn: int) -> int:
        """Hand out ``budget`` GPUs, one size step at a time, by the largest fitness gain per GPU."""
        heap: list[tuple[float, int, Job, int]] = []
        curves = {}
        for n, job in enumerate(jobs):
            sizes, speed = curves[job.id] = self.curve(state, job, gpn)
            i = sizes.index(target[job.id]) if target[job.id] in sizes else 0
            self._push_step(heap, job, sizes, speed, i, n)
        while heap and budget > 0:
            _, n, job, i = heapq.heappop(heap)
            sizes, speed = curves[job.id]
            step = sizes[i + 1] - sizes[i]
            quota = self.quotas.get(job.spec.tenant)
            if step > budget or (quota is not None and tenant_use[job.spec.tenant] + step > quota):
                continue
            budget -= step
            tenant_use[job.spec.tenant] += step
            target[job.id] = sizes[i + 1]
            self._push_step(heap, job, sizes, speed, i + 1, n)
        return budget

    def _push_step(self, heap: list[tuple[float, int, Job, int]], job: Job, sizes: list[int], speed: np.ndarray,
                   i: int, n: int) -> None:
        if i + 1 >= len(sizes):
            return
        gain = (self._utility(float(speed[i + 1])) - self._utility(float(speed[i]))) / (sizes[i + 1] - sizes[i])
        if gain > 1e-12:
            heapq.heappush(heap, (-gain, n, job, i))

    def _worth(self, state: SchedulerState, job: Job, new: int, gpn: int) -> bool:
        """Whether resizing a running job to ``new`` GPUs pays its restart within one resize interval."""
        sizes, speed = self.curve(state, job, gpn)
        now_s = float(np.interp(job.spec.gpus, sizes, speed))
        new_s = float(np.interp(new, sizes, speed))
        horizon = max(self.min_resize_interval_s, self.interval_s)
        return (new_s / max(now_s, 1e-9) - 1.0) * horizon > self.restart_cost_s

    def _apply(self, state: SchedulerState, now: float, running: list[Job], order: list[Job],
               target: dict[str, int], gpn: int) -> list[Decision]:
        out: list[Decision] = []
        for job in running:  # preempt the running jobs left without GPUs
            if job.id not in target and job.state in ("admitted", "running"):
                out.append(state.preempt(job, now, f"preempted by {self.name}: not admitted this round"))
        grows: list[Job] = []
        for job in running:  # shrink first: it frees GPUs for starts and grows
            want = target.get(job.id)
            if want is None or job.state != "running" or want == job.spec.gpus or self._held(job, now):
                continue
            if want < job.spec.gpus:
                if self._worth(state, job, want, gpn) or sum(1 for j in order if j.state == "pending" and
                                                             j.id in target) > 0:
                    d = state.resize(job, want, now, batch_size=self._batch(state, job, want, gpn),
                                     reason=f"resized {job.spec.gpus} -> {want} GPUs ({self.name})")
                    if d is not None:
                        out.append(d)
            elif self._worth(state, job, want, gpn):
                grows.append(job)
        for job in order:  # starts, in admission order, at the target size or the largest that fits
            if job.state != "pending" or job.id not in target:
                continue
            decision = self._start_sized(state, job, target[job.id], now, gpn)
            if decision is not None:
                out.append(decision)
        for job in grows:
            lo = job.spec.gpus
            for size in reversed([s for s in self.curve(state, job, gpn)[0] if lo < s <= target[job.id]]):
                d = state.resize(job, size, now, batch_size=self._batch(state, job, size, gpn),
                                 reason=f"resized {lo} -> {size} GPUs ({self.name})")
                if d is not None:
                    out.append(d)
                    break
        return out

    def _batch(self, state: SchedulerState, job: Job, gpus: int, gpn: int) -> int | None:
        model = self._model(state, job)
        return model.best_batch(gpus, -(-gpus // gpn))[0]

    def _start_sized(self, state: SchedulerState, job: Job, size: int, now: float, gpn: int) -> Decision | None:
        if not job.spec.resizable:
            return state.start(job, now)
        lo = job.spec.gpu_range[0]
        original = job.spec
        sizes = [s for s in self.curve(state, job, gpn)[0] if lo <= s <= size] or [lo]
        state.queue.discard(job)
        for s in reversed(sizes):
            job.spec = original.resized(s, gpn) if s != original.gpus else original
            decision = state.start(job, now)
            if decision is not None:
                job.batch_size = self._batch(state, job, s, gpn)
                return decision
        job.spec = original
        state.queue.push(job)
        return None
