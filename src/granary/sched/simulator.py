"""Discrete-event simulator: replays a job trace through the real state machine, policies and placement."""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from granary.sched.goodput import GoodputModel, nodes_for
from granary.sched.metrics import RunMetrics, compute_metrics
from granary.sched.model import Decision, Job, JobSpec, NodeSpec, ResizeDecision, StartDecision
from granary.sched.state import SchedulerConfig, SchedulerState
from granary.sched.trace import Trace
from granary.sched.workload import ModelFamily, families_for

log = logging.getLogger(__name__)

_FINISH, _ERROR, _NODE_FAIL, _NODE_REPAIR, _ROUND = 0, 1, 2, 3, 4
_RETRIES = 1_000_000  # the simulator retries forever; budgets are exercised by the real controller tests
COSTS: tuple[str, ...] = ("scaling", "restart", "checkpoint", "interference", "hetero")


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
        cost_model: ``realistic`` (default): a job's speed depends on its GPU count, placement, batch size, GPU
            type and neighbours, and restarts and checkpoints cost time (see ``COSTS`` and docs/sched.md);
            ``ideal``: every job runs at its trace speed wherever it lands and (re)starts for free.
        disabled_costs: names from ``COSTS`` to switch off in the realistic model (for cost breakdowns).
        elastic: trace jobs are resizable (1 GPU up to their family's maximum); only resizing policies use it, and
            only the realistic model (the ideal one has no speed-vs-size curve, so jobs keep their trace size).
        gpu_types: (label, share of nodes, speed relative to the trace's GPUs) per GPU type ("hetero").
        interference: slowdown of a single-node job started on a node another job uses ("interference").
        interference_multi_node: the same for a job spanning several nodes (its all-reduce shares links).
        cross_rack_penalty: slowdown of a job whose nodes span racks ("scaling").
        checkpoint_every_s: periodic checkpoint interval of the realistic model; each costs the family's
            ``checkpoint_s`` ("checkpoint").
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
    cost_model: Literal["realistic", "ideal"] = "realistic"
    disabled_costs: tuple[str, ...] = ()
    elastic: bool = True
    gpu_types: tuple[tuple[str, float, float], ...] = (("v100", 0.75, 1.0), ("p100", 0.25, 0.7))
    interference: float = 0.03
    interference_multi_node: float = 0.10
    cross_rack_penalty: float = 0.10
    checkpoint_every_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.cost_model not in ("realistic", "ideal"):
            raise ValueError(f"cost_model must be 'realistic' or 'ideal', got {self.cost_model!r}")
        unknown = set(self.disabled_costs) - set(COSTS)
        if unknown:
            raise ValueError(f"unknown costs {sorted(unknown)}; known: {', '.join(COSTS)}")
        if not self.gpu_types or any(share < 0 or speed <= 0 for _, share, speed in self.gpu_types):
            raise ValueError("gpu_types needs at least one (label, share >= 0, speed > 0)")
        for name in ("interference", "interference_multi_node", "cross_rack_penalty"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.checkpoint_every_s <= 0:
            raise ValueError(f"checkpoint_every_s must be > 0, got {self.checkpoint_every_s}")
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
        num_nodes = config.gpus // config.gpus_per_node
        self.costs = frozenset(COSTS) - set(config.disabled_costs) if config.cost_model == "realistic" else frozenset()
        types = self._gpu_types(num_nodes)
        self.speed = {label: speed for label, _, speed in config.gpu_types}
        self.node_specs = [
            NodeSpec(name=f"n{i:04d}", gpus=config.gpus_per_node, cpus=0.0,
                     labels={"rack": f"r{i // config.nodes_per_rack:03d}", "gpu": types[i]})
            for i in range(num_nodes)
        ]
        for spec in self.node_specs:
            self.state.add_node(spec, 0.0)
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0

    def _gpu_types(self, num_nodes: int) -> list[str]:
        """GPU type label per node: each type's share of the nodes, interleaved across racks."""
        kinds = self.config.gpu_types
        total = sum(share for _, share, _ in kinds) or 1.0
        counts = [round(num_nodes * share / total) for _, share, _ in kinds]
        counts[0] += num_nodes - sum(counts)
        labels = [label for (label, _, _), c in zip(kinds, counts, strict=True) for _ in range(c)]
        order = np.argsort(np.arange(num_nodes) % max(1, self.config.nodes_per_rack), kind="stable")
        out = [""] * num_nodes
        for label, i in zip(labels, order, strict=True):
            out[int(i)] = label
        return out

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
        self.rate = np.ones(n)
        self.families: list[ModelFamily] | None = families_for(trace) if cfg.cost_model == "realistic" else None
        self._models: dict[str, GoodputModel] = {}
        specs = self._specs(trace)
        interval = getattr(st.policy, "interval_s", None)
        if interval:
            self._push(float(interval), _ROUND, 0, 0)
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
                if self.families is not None:
                    st.models[str(nxt)] = self._model(self.families[nxt])
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
            elastic: dict[str, Any] = {}
            if cfg.elastic and self.families is not None:  # the ideal model has no speed-vs-size curve to resize by
                cap = self.families[i].max_gpus
                elastic = dict(resizable=True, min_gpus=1, max_gpus=min(cfg.gpus, max(g, cap)))
            out.append(JobSpec(
                name=f"trace-{i}", tenant=trace.tenants[tenant], gpus_per_replica=per, replicas=replicas,
                cpus_per_replica=0.0, duration_estimate_s=float(trace.duration_s[i]) if cfg.estimates else None,
                max_restarts=_RETRIES, max_node_restarts=_RETRIES, grace_s=0.0, **elastic))
        return out

    def _model(self, family: ModelFamily) -> GoodputModel:
        """One goodput model per family, shared by its jobs (policies cache speedups per model)."""
        if family.name not in self._models:
            self._models[family.name] = family.model()
        return self._models[family.name]

    def _rate(self, idx: int, job: Job) -> float:
        """Progress per second of job ``idx`` where it was just placed, in trace seconds (1: as in the trace)."""
        if not self.costs or self.families is None:
            return 1.0
        fam, cfg, costs = self.families[idx], self.config, self.costs
        model = self._model(fam)
        nodes = [self.state.cluster.nodes[i] for i in dict.fromkeys(i for i, _ in job.placement or ())]
        rate = 1.0
        if "scaling" in costs:
            k_ref = int(self.trace.gpus[idx])
            ref = float(model.goodput(k_ref, nodes_for(k_ref, cfg.gpus_per_node), max(model.base_batch, k_ref)))
            k = job.spec.gpus
            batch = job.batch_size if job.batch_size is not None else max(model.base_batch, k)
            rate *= float(model.goodput(k, len(nodes), batch)) / ref
            if len({n.spec.labels.get("rack") for n in nodes}) > 1:
                rate *= 1.0 - cfg.cross_rack_penalty
        if "hetero" in costs:
            rate *= min(self.speed.get(n.spec.labels.get("gpu", ""), 1.0) for n in nodes) if nodes else 1.0
        if "interference" in costs and any(len(n.jobs) > 1 for n in nodes):
            rate *= 1.0 - (cfg.interference_multi_node if len(nodes) > 1 else cfg.interference)
        if "checkpoint" in costs:
            rate *= 1.0 - min(0.5, fam.checkpoint_s / cfg.checkpoint_every_s)
        return rate

    def _restart_cost(self, idx: int, attempt: int) -> float:
        """Seconds before a (re)started attempt makes progress."""
        if attempt <= 1:
            return 0.0
        cost = self.config.restart_overhead_s
        if "restart" in self.costs and self.families is not None:
            cost += self.families[idx].restart_s
        return cost

    def _apply(self, decisions: list[Decision], now: float) -> None:
        for d in decisions:
            idx = int(d.job_id)
            if isinstance(d, ResizeDecision):
                self._stopped(idx, now)
                self._progress(idx, now, graceful=True)
            if isinstance(d, StartDecision | ResizeDecision):
                attempt = d.attempt if isinstance(d, StartDecision) else d.new_attempt
                self.state.replica_started(d.job_id, attempt, now)
                job = self.state.jobs[d.job_id]
                begin = now + self._restart_cost(idx, job.attempt)
                if isinstance(d, StartDecision):
                    begin += self._started(d, now)
                self.begin[idx] = begin
                rate = self.rate[idx] = self._rate(idx, job)
                left = self.trace.duration_s[idx] - self.done[idx]
                err = self.error_at[idx] * self.trace.duration_s[idx]
                if not math.isnan(err) and self.done[idx] < err:
                    self._push(begin + (err - self.done[idx]) / rate, _ERROR, idx, attempt)
                else:
                    self._push(begin + left / rate, _FINISH, idx, attempt)
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
        done = self.done[idx] + max(0.0, now - self.begin[idx]) * self.rate[idx]
        if not graceful:
            c = self.config.checkpoint_interval_s
            done = math.floor(done / c) * c if c else 0.0
        self.done[idx] = min(done, self.trace.duration_s[idx])

    def _event(self, kind: int, idx: int, attempt: int, now: float) -> None:
        st, cfg = self.state, self.config
        if kind == _ROUND:  # a resizing policy's reallocation round: the loop's pass runs at this time
            interval = float(getattr(st.policy, "interval_s", 0.0) or 0.0)
            if interval and (st.active or st.queue or self.state.next_timer() is not None):
                self._push(now + interval, _ROUND, 0, 0)
            return
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
        held_gpu_s = np.array([jobs[str(i)].attained_gpu_s for i in range(n)])
        c = self.state.counters
        return compute_metrics(submit=trace.submit_s, finish=finish, duration=trace.duration_s, gpus=trace.gpus,
                               held_s=held, tenant=trace.tenant, total_gpus=self.config.gpus,
                               preemptions=c["preemptions"], restarts_node=c["restarts_node"],
                               restarts_job=c["restarts_job"], held_gpu_s=held_gpu_s, resizes=c["resizes"])


def simulate(trace: Trace, config: SimConfig | None = None, **overrides: Any) -> RunMetrics:
    """Replay ``trace`` under ``config`` (fields can be overridden by keyword) and return the metrics."""
    base = config or SimConfig()
    if overrides:
        fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
        fields.update(overrides)
        base = SimConfig(**fields)
    return Simulator(base).run(trace)
