"""Jobs no node can ever hold say why; specs with unknown executors or absurd sizes are refused at submit."""

from __future__ import annotations

import pytest

from granary.sched.errors import InvalidJobError
from granary.sched.executors import EXECUTORS
from granary.sched.fit import never_fits
from granary.sched.model import EXECUTOR_NAMES, JobSpec, NodeSpec

CPU_ONLY = [NodeSpec(name="laptop", gpus=0, cpus=2.0)]
TWO_GPUS = [NodeSpec(name="a", gpus=2, cpus=8.0, labels={"gpu": "h100"}), NodeSpec(name="b", gpus=2, cpus=8.0)]


def test_a_gpu_job_on_a_cpu_only_machine_says_why() -> None:
    why = never_fits(JobSpec(name="train", gpus_per_replica=1), CPU_ONLY)
    assert why == "each replica needs 1 GPU(s); the largest matching node, laptop, has 0 GPU(s) and 2 CPU(s)"


@pytest.mark.parametrize(("spec", "expected"), [
    (JobSpec(name="j", gpus_per_replica=2), None),
    (JobSpec(name="j", gpus_per_replica=2, replicas=2), None),
    (JobSpec(name="j", gpus_per_replica=2, replicas=3), "all matching nodes together hold 2"),
    (JobSpec(name="j", node_selector={"gpu": "h100"}, gpus_per_replica=1, replicas=3),
     "all matching nodes together hold 2"),
    (JobSpec(name="j", node_selector={"gpu": "a100"}), "no registered node carries the labels gpu=a100"),
    (JobSpec(name="j", cpus_per_replica=16), "needs 16 CPU(s)"),
])
def test_fit_counts_sizes_labels_and_gangs(spec: JobSpec, expected: str | None) -> None:
    why = never_fits(spec, TWO_GPUS)
    assert why == expected if expected is None else expected in (why or "")


def test_no_nodes_at_all_says_how_to_start_one() -> None:
    assert "granary sched up" in (never_fits(JobSpec(name="j"), []) or "")


@pytest.mark.parametrize(("fields", "field"), [
    ({"executor": "slurmm"}, "executor"),
    ({"replicas": 10**9}, "replicas"),
    ({"gpus_per_replica": 100_000}, "gpus_per_replica"),
])
def test_unknown_executor_and_absurd_sizes_are_refused(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidJobError) as info:
        JobSpec(name="j", **fields)  # type: ignore[arg-type]
    assert info.value.field == field


def test_the_executor_names_checked_at_submit_are_the_executors() -> None:
    assert set(EXECUTOR_NAMES) == set(EXECUTORS)
