"""The co-adaptive `pollux` policy: admission, goodput-driven growth with fairness, quotas, anti-thrashing."""

from __future__ import annotations

import pytest
from tests.unit.sched.conftest import check_invariants

from granary.sched.goodput import GoodputModel, ThroughputParams
from granary.sched.model import JobSpec, NodeSpec, PreemptDecision, ResizeDecision, StartDecision
from granary.sched.policies.pollux import PolluxPolicy, allowed_sizes
from granary.sched.simulator import simulate
from granary.sched.state import SchedulerConfig, SchedulerState
from granary.sched.workload import FAMILIES, family_of, pollux_workload

SCALES = GoodputModel(params=ThroughputParams(a_grad=0.01, b_grad=0.01, a_local=0.001, b_local=0.0001, gamma=1.0),
                      base_batch=32, min_batch=32, max_batch=4096, noise_scale=1e6)  # near-linear speedup
FLAT = GoodputModel(params=ThroughputParams(a_grad=0.1, b_grad=0.0001, a_local=0.2, b_local=0.05, gamma=1.0),
                    base_batch=32, min_batch=32, max_batch=64, noise_scale=10.0)  # gains nothing from GPUs


def _state(nodes: int = 1, gpus: int = 8, **options: object) -> SchedulerState:
    st = SchedulerState(SchedulerConfig(policy="pollux", policy_options=dict(options), heartbeat_timeout_s=None))
    for i in range(nodes):
        st.add_node(NodeSpec(name=f"n{i}", gpus=gpus, cpus=64, labels={"rack": "r0"}), 0.0)
    return st


def _run(st: SchedulerState, now: float) -> list[object]:
    out = st.tick(now) + st.schedule(now)
    for d in out:
        if isinstance(d, StartDecision):
            st.replica_started(d.job_id, d.attempt, now)
        elif isinstance(d, ResizeDecision):
            st.replica_started(d.job_id, d.new_attempt, now)
    check_invariants(st)
    return out


def _elastic(name: str, gpus: int = 1, hi: int = 8, **kw: object) -> JobSpec:
    return JobSpec(name=name, gpus_per_replica=gpus, resizable=True, min_gpus=1, max_gpus=hi, **kw)  # type: ignore[arg-type]


def test_allowed_sizes() -> None:
    assert allowed_sizes(1, 8, 8) == [1, 2, 4, 8]
    assert allowed_sizes(3, 40, 8) == [3, 4, 8, 16, 24, 32, 40]
    assert allowed_sizes(4, 4, 8) == [4]


def test_gpus_go_where_they_raise_goodput() -> None:
    st = _state()
    a = st.submit(_elastic("scales"), 0.0)
    b = st.submit(_elastic("flat"), 0.0)
    st.models[a.id], st.models[b.id] = SCALES, FLAT
    _run(st, 0.0)
    assert a.state == b.state == "running"
    assert (a.spec.gpus, b.spec.gpus) == (4, 1)  # 4 + 1 of 8: the flat job gets nothing more, 2 + 1 stay idle
    assert a.batch_size is not None and a.batch_size >= 4 * 32  # a larger batch with more GPUs


def test_fairness_exponent_shares_between_similar_jobs() -> None:
    fair, greedy = _state(p=-1.0), _state(p=1.0)
    for st in (fair, greedy):
        jobs = [st.submit(_elastic(f"j{i}"), 0.0) for i in range(2)]
        for j in jobs:
            st.models[j.id] = SCALES
        _run(st, 0.0)
    assert sorted(j.spec.gpus for j in fair.jobs.values()) == [4, 4]
    assert sum(j.spec.gpus for j in greedy.jobs.values()) == 8


def test_quota_caps_a_tenant_and_fixed_jobs_keep_their_size() -> None:
    st = _state(quotas={"a": 2})
    a = st.submit(_elastic("a1", tenant="a"), 0.0)
    fixed = st.submit(JobSpec(name="fixed", gpus_per_replica=3, tenant="b"), 0.0)
    st.models[a.id] = SCALES
    _run(st, 0.0)
    assert a.spec.gpus == 2 and fixed.spec.gpus == 3 and fixed.state == "running"


def test_no_resize_within_the_interval_then_shrink_for_a_newcomer() -> None:
    st = _state(min_resize_interval_s=600.0, min_run_s=0.0, interval_s=60.0)
    a = st.submit(_elastic("a"), 0.0)
    st.models[a.id] = SCALES
    _run(st, 0.0)
    assert a.spec.gpus == 8
    b = st.submit(_elastic("b"), 100.0)
    st.models[b.id] = SCALES
    assert not _run(st, 100.0) and b.state == "pending"  # a holds its size for 600 s
    out = _run(st, 700.0)
    kinds = sorted(type(d).__name__ for d in out)
    assert kinds == ["ResizeDecision", "StartDecision"] and a.spec.gpus + b.spec.gpus <= 8
    assert a.resizes == 1 and b.state == "running"
    assert not any(isinstance(d, PreemptDecision) for d in out)


def test_pollux_beats_mlfq_on_a_pollux_workload() -> None:
    tr = pollux_workload(120, hours=6, seed=4)
    mlfq = simulate(tr, gpus=32, policy="mlfq")
    pollux = simulate(tr, gpus=32, policy="pollux")
    assert pollux.unfinished == 0 and pollux.resizes > 0
    assert pollux.avg_jct_s < 0.8 * mlfq.avg_jct_s


def test_trace_mapping_is_deterministic_and_binned() -> None:
    assert family_of(100.0, 1, 7) is family_of(100.0, 1, 7)
    assert family_of(100.0, 1, 7).name in ("cifar10-resnet18", "neumf-movielens")
    assert family_of(3600.0 * 200, 1, 0) is FAMILIES["imagenet-resnet50"]


@pytest.mark.parametrize("bad", [dict(interval_s=0.0), dict(p=2.0), dict(quotas={"a": -1})])
def test_bad_options(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PolluxPolicy(**bad)  # type: ignore[arg-type]
