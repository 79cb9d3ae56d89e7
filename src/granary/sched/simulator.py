"""Discrete-event simulator: replays a job trace through the real state machine, policies and placement."""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from granary.sched.metrics import RunMetrics, compute_metrics
from granary.sched.model import JobSpec, NodeSpec, PreemptDecision, StartDecision
from granary.sched.state import SchedulerConfig, SchedulerState
from granary.sched.trace import Trace

log = logging.getLogger(__name__)

_FINISH, _ERROR, _NODE_FAIL, _NODE_REPAIR = 0, 1, 2, 3
_RETRIES = 1_000_000  # the simulator retries forever; budgets are exercised by the real controller tests


@dataclass(kw_only=True, frozen=True)
class SimConfig:
    """A simulated cluster and its failure model.

    Attributes:
        gpus: cluster size in GPUs.
        gpus_per_node: GPUs per node (a job larger than this spans nodes, one replica per node share).
        nodes_per_rack: rack size for topology-aware placement.
        policy: policy name; policy_options: its keyword arguments.
        placement: placement strategy name.
        estimates: give each job its true duration as its estimate (used by ``sjf`` and ``easy`` only).
        restart_overhead_s: time lost each time a job (re)starts after a preemption or failure.
        node_mtbf_s: mean time between failures of one node (None: no node failures).
        node_repair_s: how long a failed node stays down.
        job_error_rate: probability that a job fails once (non-zero exit) somewhere in its run.
        checkpoint_interval_s: jobs checkpoint every this many seconds of progress; a failure loses the
            progress since the last checkpoint (None: a failure loses everything). Preemption is graceful.
        seed: random seed of the failure model.
    """

    gpus: int = 640
    gpus_per_node: int = 8
    nodes_per_rack: int = 16
    policy: str = "mlfq"
    policy_options: dict[str, Any] = field(default_factory=dict)
    placement: str = "topology"
    estimates: bool = True
    restart_overhead_s: float = 0.0
    node_mtbf_s: float | None = None
    node_repair_s: float = 3600.0
    job_error_rate: float = 0.0
    checkpoint_interval_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus_per_node < 1 or self.gpus % self.gpus_per_node:
            raise ValueError(f"gpus ({self.gpus}) must be a positive multiple of gpus_per_node "
                             f"({self.gpus_per_node})")
        if self.restart_overhead_s < 0 or self.node_repair_s <= 0 or not 0 <= self.job_error_rate <= 1:
            raise ValueError("need restart_overhead_s >= 0, node_repair_s > 0, 0 <= job_error_rate <= 1")
        if self.node_mtbf_s is not None and self.node_mtbf_s <= 0:
            raise ValueError(f"node_mtbf_s must be > 0, got {self.node_mtbf_s}")
        if self.checkpoint_interval_s is not None and self.checkpoint_interval_s <= 0:
            raise ValueError(f"checkpoint_interval_s must be > 0, got {self.checkpoint_interval_s}")


def split_gpus(gpus: int, gpus_per_node: int) -> tuple[int, int]:
    """(replicas, gpus_per_replica) for a job of ``gpus`` GPUs: as few replicas as possible, equal sizes."""
    replicas = max(1, math.ceil(gpus / gpus_per_node))
    while gpus % replicas:
        replicas += 1
    return replicas, gpus // replicas


class Simulator:
    """Replays a trace. Time only moves from event to event; at each distinct time the state machine's
    timers fire and the policy makes one pass.

    Args:
        config: the simulated cluster.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.state = SchedulerState(SchedulerConfig(
            policy=config.policy, policy_options=config.policy_options, placement=config.placement,
            heartbeat_timeout_s=None, record=False, drain_after_failures=0))
        self.node_specs = [
            NodeSpec(name=f"n{i:04d}", gpus=config.gpus_per_node, cpus=0.0,
                     labels={"rack": f"r{i // config.nodes_per_rack:03d}"})
            for i in range(config.gpus // config.gpus_per_node)
        ]
        for spec in self.node_specs:
            self.state.add_node(spec, 0.0)
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0

    def _push(self, at: float, kind: int, idx: int, attempt: int) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, idx, attempt))

    def run(self, trace: Trace) -> RunMetrics:
        """Replay ``trace`` to the end and return its metrics."""
        cfg, st = self.config, self.state
        n = len(trace)
        self.done = np.zeros(n)
        self.begin = np.full(n, np.nan)
        self.error_at = np.where(self.rng.random(n) < cfg.job_error_rate, self.rng.random(n), np.nan)
        self.trace = trace
        specs = self._specs(trace)
        if cfg.node_mtbf_s is not None:
            for i in range(len(self.node_specs)):
                self._push(float(self.rng.exponential(cfg.node_mtbf_s)), _NODE_FAIL, i, 0)
        nxt, submit = 0, trace.submit_s
        while True:
            t = min(submit[nxt] if nxt < n else math.inf, self.events[0][0] if self.events else math.inf,
                    st.next_timer() or math.inf)
            if t == math.inf or (nxt >= n and not st.active and not st.queue and not self._timers_left()):
                break
            while nxt < n and submit[nxt] <= t:
                st.submit(specs[nxt], float(submit[nxt]), job_id=str(nxt))
                nxt += 1
            while self.events and self.events[0][0] <= t:
                at, _, kind, idx, attempt = heapq.heappop(self.events)
                self._event(kind, idx, attempt, at)
            self._apply(st.tick(t), t)
            self._apply(st.schedule(t), t)
        return self._metrics(trace)

    def _timers_left(self) -> bool:
        return any(job.state == "pending" for job in self.state.jobs.values()) if self.state.next_timer() else False

    def _specs(self, trace: Trace) -> list[JobSpec]:
        cfg = self.config
        out = []
        cache: dict[tuple[int, int], tuple[int, int]] = {}
        for i in range(len(trace)):
            g, tenant = int(trace.gpus[i]), int(trace.tenant[i])
            if (g, tenant) not in cache:
                cache[(g, tenant)] = split_gpus(g, cfg.gpus_per_node)
            replicas, per = cache[(g, tenant)]
            out.append(JobSpec(
                name=f"trace-{i}", tenant=trace.tenants[tenant], gpus_per_replica=per, replicas=replicas,
                cpus_per_replica=0.0, duration_estimate_s=float(trace.duration_s[i]) if cfg.estimates else None,
                max_restarts=_RETRIES, max_node_restarts=_RETRIES, grace_s=0.0))
        return out

    def _apply(self, decisions: list[StartDecision | PreemptDecision], now: float) -> None:
        for d in decisions:
            idx = int(d.job_id)
            if isinstance(d, StartDecision):
                self.state.replica_started(d.job_id, d.attempt, now)
                begin = now + self.config.restart_overhead_s * (self.state.jobs[d.job_id].attempt > 1)
                begin += self._started(d, now)
                self.begin[idx] = begin
                left = self.trace.duration_s[idx] - self.done[idx]
                err = self.error_at[idx] * self.trace.duration_s[idx]
                if not math.isnan(err) and self.done[idx] < err:
                    self._push(begin + err - self.done[idx], _ERROR, idx, d.attempt)
                else:
                    self._push(begin + left, _FINISH, idx, d.attempt)
            else:
                self._stopped(idx, now)
                self._progress(idx, now, graceful=not d.reason.startswith("node"))

    def _started(self, d: StartDecision, now: float) -> float:
        """Hook: a job was placed; returns extra delay before it runs (power.py: waking powered-down nodes)."""
        return 0.0

    def _stopped(self, idx: int, now: float) -> None:
        """Hook: job ``idx`` released its GPUs (finished, failed or preempted)."""

    def _progress(self, idx: int, now: float, *, graceful: bool) -> None:
        """Credit the work done in the run that just stopped (minus what a failure loses)."""
        done = self.done[idx] + max(0.0, now - self.begin[idx])
        if not graceful:
            c = self.config.checkpoint_interval_s
            done = math.floor(done / c) * c if c else 0.0
        self.done[idx] = min(done, self.trace.duration_s[idx])

    def _event(self, kind: int, idx: int, attempt: int, now: float) -> None:
        st, cfg = self.state, self.config
        if kind == _NODE_FAIL:
            spec = self.node_specs[idx]
            if st.cluster.node(spec.name).status != "down":
                self._apply(st.node_failed(spec.name, now, "injected failure"), now)
            self._push(now + cfg.node_repair_s, _NODE_REPAIR, idx, 0)
            return
        if kind == _NODE_REPAIR:
            st.add_node(self.node_specs[idx], now)
            assert cfg.node_mtbf_s is not None
            self._push(now + float(self.rng.exponential(cfg.node_mtbf_s)), _NODE_FAIL, idx, 0)
            return
        job = st.jobs[str(idx)]
        if job.attempt != attempt or job.state not in ("admitted", "running"):
            return
        self._stopped(idx, now)
        if kind == _FINISH:
            self.done[idx] = self.trace.duration_s[idx]
            st.finished(job.id, attempt, now, 0)
        else:
            self.error_at[idx] = np.nan
            self._progress(idx, now, graceful=False)
            st.finished(job.id, attempt, now, 1, reason="injected job error")

    def _metrics(self, trace: Trace) -> RunMetrics:
        jobs = self.state.jobs
        n = len(trace)
        finish = np.array([jobs[str(i)].finish_time if jobs[str(i)].state == "succeeded" else np.nan
                           for i in range(n)], dtype=np.float64)
        held = np.array([jobs[str(i)].run_s for i in range(n)])
        c = self.state.counters
        return compute_metrics(submit=trace.submit_s, finish=finish, duration=trace.duration_s, gpus=trace.gpus,
                               held_s=held, tenant=trace.tenant, total_gpus=self.config.gpus,
                               preemptions=c["preemptions"], restarts_node=c["restarts_node"],
                               restarts_job=c["restarts_job"])


def simulate(trace: Trace, config: SimConfig | None = None, **overrides: Any) -> RunMetrics:
    """Replay ``trace`` under ``config`` (fields can be overridden by keyword) and return the metrics."""
    base = config or SimConfig()
    if overrides:
        fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
        fields.update(overrides)
        base = SimConfig(**fields)
    return Simulator(base).run(trace)
