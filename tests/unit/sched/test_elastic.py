"""Elastic job specs (ranges, validation, YAML) and the state machine's resize decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.sched.conftest import check_invariants, make_state

from granary.sched.errors import InvalidJobError, TransitionError
from granary.sched.model import JobSpec, ResizeDecision, StartDecision
from granary.sched.spec import load_specs


def test_elastic_fields_give_ranges_and_resized_specs() -> None:
    spec = JobSpec(name="e", gpus_per_replica=2, resizable=True, max_gpus=16, batch_size=256,
                   min_batch_size=128, max_batch_size=2048)
    assert spec.gpu_range == (1, 16) and spec.batch_range == (128, 2048)
    big = spec.resized(12, 8)
    assert (big.replicas, big.gpus_per_replica, big.gpus) == (2, 6, 12)
    assert big.gpu_range == (1, 16) and big.resizable  # the range travels with the resized spec
    assert spec.resized(1, 8).gpus == 1
    fixed = JobSpec(name="f", gpus_per_replica=4)
    assert fixed.gpu_range == (4, 4) and fixed.batch_range is None
    with pytest.raises(InvalidJobError, match="cannot run on 17 GPUs"):
        spec.resized(17, 8)
    with pytest.raises(InvalidJobError, match="resizable=False"):
        fixed.resized(2, 8)


@pytest.mark.parametrize(("fields", "match"), [
    (dict(gpus_per_replica=2, min_gpus=1), "need resizable: true"),
    (dict(gpus_per_replica=2, resizable=True, min_gpus=4, max_gpus=2), "swap or fix"),
    (dict(gpus_per_replica=8, resizable=True, max_gpus=4), r"starting size \(8 GPUs"),
    (dict(gpus_per_replica=0, resizable=True), "needs GPUs"),
    (dict(gpus_per_replica=1, resizable=True, max_gpus=0), "whole number >= 1"),
    (dict(gpus_per_replica=1, batch_size=64, max_batch_size=32), "must lie in min_batch_size..max_batch_size"),
    (dict(gpus_per_replica=1, max_batch_size=32), "need batch_size"),
])
def test_bad_elastic_fields_say_what_to_fix(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidJobError, match=match) as info:
        JobSpec(name="x", **fields)  # type: ignore[arg-type]
    assert info.value.field in ("min_gpus", "max_gpus", "gpus_per_replica", "resizable", "batch_size")


def test_elastic_yaml_spec(tmp_path: Path) -> None:
    f = tmp_path / "e.yaml"
    f.write_text("name: bert\ncommand: python train.py\ngpus_per_replica: 2\nresizable: true\nmin_gpus: 1\n"
                 "max_gpus: 8\nbatch_size: 64\nmax_batch_size: 512\n")
    (spec,) = load_specs(f)
    assert spec.gpu_range == (1, 8) and spec.batch_range == (64, 512)
    assert JobSpec.from_dict(spec.to_dict()) == spec
    f.write_text("name: bert\ngpus_per_replica: 2\nresizable: true\nmax_gpus: 1\n")
    with pytest.raises(InvalidJobError, match=r"e.yaml.*must lie in min_gpus..max_gpus \(1..1\)"):
        load_specs(f)


def _start(st, now):  # type: ignore[no-untyped-def]
    out = st.schedule(now)
    for d in out:
        if isinstance(d, StartDecision):
            st.replica_started(d.job_id, d.attempt, now)
    return out


def test_resize_moves_a_running_job_and_accounts_its_run() -> None:
    st = make_state(nodes=2, gpus=4)
    job = st.submit(JobSpec(name="e", gpus_per_replica=2, resizable=True, max_gpus=8), 0.0)
    _start(st, 0.0)
    assert job.state == "running" and st.cluster.free_gpus == 6
    d = st.resize(job, 8, 10.0, batch_size=512)
    assert isinstance(d, ResizeDecision) and (d.attempt, d.new_attempt, d.gpus, d.batch_size) == (1, 2, 8, 512)
    assert len(d.placement) == 2 and sorted(d.nodes) == ["n0", "n1"]
    assert job.state == "admitted" and job.attempt == 2 and job.spec.gpus == 8 and job.resizes == 1
    assert job.attained_gpu_s == pytest.approx(20.0) and st.cluster.free_gpus == 0
    assert st.usage["default"] == 8
    check_invariants(st)
    st.replica_started(job.id, 2, 11.0)
    d2 = st.resize(job, 1, 20.0)
    assert d2 is not None and st.cluster.free_gpus == 7 and job.attained_gpu_s == pytest.approx(20.0 + 9 * 8)
    assert [(t.from_state, t.to_state) for t in st.transitions][-3:] == [
        ("running", "admitted"), ("admitted", "running"), ("running", "admitted")]
    check_invariants(st)


def test_resize_that_does_not_fit_changes_nothing() -> None:
    st = make_state(nodes=1, gpus=4)
    job = st.submit(JobSpec(name="e", gpus_per_replica=2, resizable=True, max_gpus=4), 0.0)
    other = st.submit(JobSpec(name="o", gpus_per_replica=1), 0.0)
    _start(st, 0.0)
    assert other.state == "running"
    assert st.resize(job, 4, 5.0) is None
    assert job.state == "running" and job.attempt == 1 and job.spec.gpus == 2 and st.cluster.free_gpus == 1
    check_invariants(st)
    with pytest.raises(TransitionError):
        st.resize(st.submit(JobSpec(name="p", gpus_per_replica=4, resizable=True), 6.0), 2, 6.0)
