"""Kubernetes manifests, validated at schema level with the official client's models (no cluster here)."""

from __future__ import annotations

import pytest

from granary.sched.model import JobSpec

k8s = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed: pip install 'granary[k8s]'")
from granary.sched.executors.k8s import build_manifest  # noqa: E402


def _roundtrip(manifest: dict, kind: str) -> object:  # type: ignore[type-arg]
    api = k8s.client.ApiClient()
    return api._ApiClient__deserialize(manifest, kind)  # the client's own schema-checked decoding


def test_single_replica_job_manifest_is_a_valid_v1_job() -> None:
    spec = JobSpec(name="train", tenant="vision", command=("python", "train.py"), gpus_per_replica=2,
                   cpus_per_replica=4, memory_bytes_per_replica=2**30, node_selector={"gpu": "h100"}, grace_s=30)
    m = build_manifest("granary-j1-1-0", spec, {"GRANARY_JOB_ID": "j1"})
    job = _roundtrip(m, "V1Job")
    assert job.kind == "Job" and job.spec.backoff_limit == 0  # type: ignore[attr-defined]
    c = job.spec.template.spec.containers[0]  # type: ignore[attr-defined]
    assert c.resources.limits == {"nvidia.com/gpu": "2", "cpu": "4", "memory": str(2**30)}
    assert c.command == ["/bin/sh", "-c", "python train.py"]
    assert job.spec.template.spec.node_selector == {"gpu": "h100"}  # type: ignore[attr-defined]
    assert job.spec.template.spec.termination_grace_period_seconds == 30  # type: ignore[attr-defined]


def test_gang_becomes_a_jobset_with_an_indexed_job_template() -> None:
    spec = JobSpec(name="big", command="torchrun train.py", gpus_per_replica=8, replicas=4)
    m = build_manifest("granary-j2-1-0", spec, {})
    assert m["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and m["kind"] == "JobSet"
    assert m["spec"]["failurePolicy"] == {"maxRestarts": 0}
    template = _roundtrip(m["spec"]["replicatedJobs"][0]["template"], "V1JobTemplateSpec")
    assert template.spec.parallelism == 4 and template.spec.completions == 4  # type: ignore[attr-defined]
    assert template.spec.completion_mode == "Indexed"  # type: ignore[attr-defined]


def test_missing_required_field_is_rejected_by_the_models() -> None:
    with pytest.raises(ValueError, match="containers"):
        k8s.client.V1PodSpec(containers=None)
