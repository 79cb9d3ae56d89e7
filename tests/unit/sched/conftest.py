"""Helpers for scheduler unit tests: small clusters and an invariant checker."""

from __future__ import annotations

from collections import Counter

import pytest

from granary.sched.model import ACTIVE, TERMINAL, NodeSpec
from granary.sched.state import SchedulerConfig, SchedulerState


def make_state(policy: str = "fifo", *, nodes: int = 2, gpus: int = 4, racks: int = 1,
               **options: object) -> SchedulerState:
    st = SchedulerState(SchedulerConfig(policy=policy, policy_options=dict(options), heartbeat_timeout_s=5.0,
                                        backoff_base_s=1.0, backoff_max_s=8.0))
    for i in range(nodes):
        st.add_node(NodeSpec(name=f"n{i}", gpus=gpus, cpus=16, labels={"rack": f"r{i % racks}"}), 0.0)
    return st


def check_invariants(st: SchedulerState) -> None:
    """No over-allocation, gangs whole, every job in exactly one place, usage consistent."""
    held: dict[int, list[int]] = {}
    usage: Counter[str] = Counter()
    for job in st.jobs.values():
        if job.state in ACTIVE:
            assert job.id in st.active
            assert job.placement is not None and len(job.placement) == job.spec.replicas  # all-or-nothing
            for node, ids in job.placement:
                assert len(ids) == job.spec.gpus_per_replica
                held.setdefault(node, []).extend(ids)
            usage[job.spec.tenant] += job.gpus
            assert job.id not in st.queue
        else:
            assert job.id not in st.active and job.placement is None
        if job.state in TERMINAL:
            assert job.id not in st.queue
    for node in st.cluster.nodes:
        ids = held.get(node.index, [])
        assert len(ids) == len(set(ids)), f"GPU given twice on {node.spec.name}"
        assert sorted(ids + node.free_gpu_ids) == list(range(node.spec.gpus)), "GPU lost or over-allocated"
    assert st.cluster.free_gpus == sum(n.free_gpus for n in st.cluster.nodes if n.status == "up")
    assert {k: v for k, v in st.usage.items() if v} == {k: v for k, v in usage.items() if v}


@pytest.fixture
def state() -> SchedulerState:
    return make_state()
