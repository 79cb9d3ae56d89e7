"""The pure state machine: lifecycle, DAGs, retries and budgets, node loss, gang timeout, drain, recovery."""

from __future__ import annotations

import pytest
from tests.unit.sched.conftest import check_invariants, make_state

from granary.sched.errors import JobNotFoundError, TransitionError
from granary.sched.model import JobSpec, PreemptDecision, StartDecision


def _run(st, now):  # type: ignore[no-untyped-def]
    """tick + schedule and mark every start as running (what an executor does)."""
    out = st.tick(now) + st.schedule(now)
    for d in out:
        if isinstance(d, StartDecision):
            st.replica_started(d.job_id, d.attempt, now)
    check_invariants(st)
    return out


def test_lifecycle_records_transitions_with_reasons() -> None:
    st = make_state()
    job = st.submit(JobSpec(name="a", gpus_per_replica=2), 0.0)
    out = _run(st, 1.0)
    assert [type(d) for d in out] == [StartDecision]
    assert out[0].nodes == ("n0",) and len(out[0].placement[0][1]) == 2
    st.finished(job.id, 1, 5.0, 0)
    assert job.state == "succeeded" and job.run_s == pytest.approx(4.0) and job.attained_gpu_s == pytest.approx(8.0)
    assert [(t.from_state, t.to_state) for t in st.transitions] == [
        ("", "pending"), ("pending", "admitted"), ("admitted", "running"), ("running", "succeeded")]
    assert all(t.correlation_id and t.reason for t in st.transitions)
    with pytest.raises(TransitionError):
        st.cancel(job.id, 6.0)


def test_dag_runs_in_order_and_failure_cancels_dependents() -> None:
    st = make_state()
    prep = st.submit(JobSpec(name="prep", gpus_per_replica=1), 0.0)
    train = st.submit(JobSpec(name="train", gpus_per_replica=1, depends_on=(prep.id,)), 0.0)
    evaluate = st.submit(JobSpec(name="eval", gpus_per_replica=1, depends_on=(train.id,)), 0.0)
    assert [d.job_id for d in _run(st, 1.0)] == [prep.id]
    st.finished(prep.id, 1, 2.0, 0)
    assert [d.job_id for d in _run(st, 2.0)] == [train.id]
    st.finished(train.id, 1, 3.0, 7)  # max_restarts=0: fails for good
    assert train.state == "failed" and evaluate.state == "cancelled"
    assert "dependency" in evaluate.reason
    with pytest.raises(JobNotFoundError):
        st.submit(JobSpec(name="x", depends_on=("nope",)), 4.0)


def test_job_errors_retry_with_exponential_backoff_then_fail() -> None:
    st = make_state()
    job = st.submit(JobSpec(name="flaky", gpus_per_replica=1, max_restarts=2), 0.0)
    _run(st, 0.0)
    st.finished(job.id, 1, 1.0, 1)
    assert job.state == "pending" and job.not_before == pytest.approx(2.0)  # base 1 s
    assert _run(st, 1.5) == []  # still backing off
    assert [d.attempt for d in _run(st, 2.0)] == [2]
    st.finished(job.id, 2, 3.0, 1)
    assert job.not_before == pytest.approx(5.0)  # doubled
    _run(st, 5.0)
    st.finished(job.id, 3, 6.0, 1)
    assert job.state == "failed" and "no job retries left: 2/2" in job.reason
    assert st.counters["restarts_job"] == 2


def test_node_failure_has_its_own_budget_and_requeues_elsewhere() -> None:
    st = make_state()
    job = st.submit(JobSpec(name="t", gpus_per_replica=4, max_restarts=0, max_node_restarts=1), 0.0)
    first = _run(st, 0.0)[0]
    lost = first.nodes[0]
    out = st.node_failed(lost, 1.0, "power")
    assert isinstance(out[0], PreemptDecision) and job.state == "pending" and job.node_restarts == 1
    again = _run(st, 2.0)[0]
    assert again.nodes[0] != lost and again.attempt == 2
    st.node_failed(again.nodes[0], 3.0, "power")
    assert job.state == "failed" and "node retries" in job.reason


def test_heartbeat_timeout_marks_node_down_and_requeues() -> None:
    st = make_state(nodes=2, gpus=1)
    a = st.submit(JobSpec(name="a", gpus_per_replica=1), 0.0)
    _run(st, 0.0)
    node = st.cluster.nodes[a.placement[0][0]]
    other = next(n for n in st.cluster.nodes if n is not node)
    st.heartbeat(other.spec.name, 4.0)
    out = _run(st, 5.5)  # node silent for 5.5 s > 5 s timeout; the other is fresh
    assert node.status == "down" and other.status == "up"
    assert any(isinstance(d, PreemptDecision) and d.job_id == a.id for d in out)
    assert a.state == "pending" and a.node_restarts == 1
    st.heartbeat(node.spec.name, 6.0)
    assert node.status == "up"


def test_gang_is_all_or_nothing_and_times_out() -> None:
    st = make_state("sjf", nodes=2, gpus=4)  # backfills past the gang that cannot fit
    big = st.submit(JobSpec(name="gang", gpus_per_replica=4, replicas=3), 0.0)
    assert _run(st, 0.0) == []  # 12 GPUs asked, 8 exist: nothing is placed
    assert big.state == "pending" and st.cluster.free_gpus == 8
    gang = st.submit(JobSpec(name="g2", gpus_per_replica=4, replicas=2, gang_timeout_s=10.0), 0.0)
    out = st.schedule(0.0)
    assert [d.job_id for d in out] == [gang.id] and len(out[0].placement) == 2
    st.replica_started(gang.id, 1, 1.0, all_started=False)  # one replica never comes up
    for node in ("n0", "n1"):
        st.heartbeat(node, 10.0)
    out = st.tick(10.5)
    assert [d.reason for d in out] == ["gang timeout"] and gang.state == "pending"
    check_invariants(st)


def test_node_is_drained_after_repeated_failures() -> None:
    st = make_state(nodes=1, gpus=2)
    for i in range(3):
        job = st.submit(JobSpec(name=f"bad{i}", gpus_per_replica=1), float(i))
        _run(st, float(i))
        st.finished(job.id, 1, float(i) + 0.5, 1)
    assert st.cluster.nodes[0].status == "draining"
    st.submit(JobSpec(name="ok", gpus_per_replica=1), 5.0)
    assert _run(st, 5.0) == []
    st.drain("n0", drained=False)
    st.heartbeat("n0", 6.0)
    assert len(_run(st, 6.0)) == 1


def test_cancel_running_job_stops_it_and_stale_exit_is_ignored() -> None:
    st = make_state()
    job = st.submit(JobSpec(name="a", gpus_per_replica=1, grace_s=3.0), 0.0)
    _run(st, 0.0)
    out = st.cancel(job.id, 1.0)
    assert out == [PreemptDecision(job.id, 1, 3.0, "cancelled by user")]
    assert st.finished(job.id, 1, 2.0, -15) == [] and job.state == "cancelled"
    check_invariants(st)


def test_restore_rebuilds_active_and_pending_jobs() -> None:
    st = make_state()
    a = st.submit(JobSpec(name="a", gpus_per_replica=2), 0.0)
    b = st.submit(JobSpec(name="b", gpus_per_replica=4, replicas=2), 0.0)
    _run(st, 0.0)
    fresh = make_state()
    for job in (a, b):
        replicas = [(st.cluster.nodes[i].spec.name, ids) for i, ids in job.placement or ()]
        job2 = type(job)(id=job.id, spec=job.spec, submit_time=job.submit_time, state=job.state,
                         attempt=job.attempt)
        fresh.restore(job2, replicas, started_at=0.0 if job.state == "running" else None, now=1.0)
    check_invariants(fresh)
    assert fresh.jobs[a.id].state == "running" and fresh.cluster.free_gpus == st.cluster.free_gpus
    assert fresh.jobs[b.id].id in fresh.queue


def test_restart_requeues_under_the_job_budget_and_evacuate_under_the_node_budget() -> None:
    st = make_state("fifo", nodes=2, gpus=4)
    a = st.submit(JobSpec(name="a", gpus_per_replica=4, max_restarts=1), 0.0)
    b = st.submit(JobSpec(name="b", gpus_per_replica=4), 0.0)
    st.schedule(0.0)
    for job in (a, b):
        st.replica_started(job.id, job.attempt, 1.0)
    out = st.restart(a.id, 2.0, "hung")
    assert out == [PreemptDecision(a.id, 1, a.spec.grace_s, "hung")]
    assert (a.state, a.job_restarts, a.node_restarts) == ("pending", 1, 0)
    assert st.restart(a.id, 2.0, "again") == []  # not active: nothing to stop
    node = next(n for n in st.cluster.nodes if b.id in n.jobs)
    out = st.evacuate(node.spec.name, 3.0, "XID 79")
    assert [d.job_id for d in out] == [b.id] and out[0].reason.startswith("evacuated from")
    assert (b.state, b.node_restarts, node.status) == ("pending", 1, "draining")
    check_invariants(st)


def test_power_cap_bounds_busy_gpus_in_the_state_machine() -> None:
    from granary.sched.model import NodeSpec
    from granary.sched.state import SchedulerConfig, SchedulerState

    st = SchedulerState(SchedulerConfig(policy="fifo", max_busy_gpus=4))
    st.add_node(NodeSpec(name="n0", gpus=8, cpus=16), 0.0)
    jobs = [st.submit(JobSpec(name=f"j{i}", gpus_per_replica=2), 0.0) for i in range(3)]
    cpu_only = st.submit(JobSpec(name="cpu"), 0.0)
    st.schedule(0.0)
    assert [j.state for j in jobs] == ["admitted", "admitted", "pending"]
    assert cpu_only.state == "admitted"  # the cap counts GPUs only
    st.finished(jobs[0].id, jobs[0].attempt, 1.0, 0)
    st.schedule(1.0)
    assert jobs[2].state == "admitted"
    check_invariants(st)
