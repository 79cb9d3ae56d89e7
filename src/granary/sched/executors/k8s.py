"""Kubernetes executor: a batch/v1 Job per attempt, or a JobSet for gangs, through the official client.

Manifests are built from the client's model classes, so a missing or mistyped field fails here, not in
the API server. No cluster runs in Granary's CI; the manifests are validated at schema level in tests.
"""

from __future__ import annotations

from typing import Any

from granary.errors import MissingDependencyError
from granary.sched.errors import ExecutorError
from granary.sched.executors.base import Executor, Status, command_line
from granary.sched.model import JobSpec

JOBSET_API = ("jobset.x-k8s.io", "v1alpha2", "jobsets")


def _client() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise MissingDependencyError("kubernetes", "k8s") from exc
    return kubernetes.client


def job_template(name: str, spec: JobSpec, env: dict[str, str], *, image: str) -> Any:
    """The pod-level Job spec shared by Jobs and JobSets (one pod per replica, never restarted by k8s)."""
    k = _client()
    limits: dict[str, str] = {}
    if spec.gpus_per_replica:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_replica)
    if spec.cpus_per_replica:
        limits["cpu"] = f"{spec.cpus_per_replica:g}"
    if spec.memory_bytes_per_replica:
        limits["memory"] = str(spec.memory_bytes_per_replica)
    container = k.V1Container(
        name="job", image=image, command=["/bin/sh", "-c", command_line(spec)], working_dir=spec.workdir,
        env=[k.V1EnvVar(name=n, value=v) for n, v in sorted(env.items())],
        resources=k.V1ResourceRequirements(limits=limits or None, requests=limits or None))
    pod = k.V1PodSpec(containers=[container], restart_policy="Never", node_selector=spec.node_selector or None,
                      termination_grace_period_seconds=int(spec.grace_s))
    meta = k.V1ObjectMeta(labels={"granary.io/attempt": name, "granary.io/tenant": spec.tenant})
    return k.V1JobSpec(template=k.V1PodTemplateSpec(metadata=meta, spec=pod), backoff_limit=0,
                       parallelism=spec.replicas, completions=spec.replicas,
                       completion_mode="Indexed" if spec.replicas > 1 else "NonIndexed")


def build_manifest(name: str, spec: JobSpec, env: dict[str, str], *, image: str = "python:3.11-slim",
                   namespace: str = "default") -> dict[str, Any]:
    """A Job manifest (single replica or no gang) or a JobSet manifest (gang), as a plain dict."""
    k = _client()
    api = k.ApiClient()
    meta = k.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "granary"})
    template = job_template(name, spec, env, image=image)
    if spec.replicas == 1 or not spec.gang:
        job = k.V1Job(api_version="batch/v1", kind="Job", metadata=meta, spec=template)
        return api.sanitize_for_serialization(job)
    group, version, _ = JOBSET_API
    return {
        "apiVersion": f"{group}/{version}", "kind": "JobSet", "metadata": api.sanitize_for_serialization(meta),
        "spec": {
            "failurePolicy": {"maxRestarts": 0},  # Granary owns retries and their budgets
            "replicatedJobs": [{"name": "workers", "replicas": 1,
                                "template": {"spec": api.sanitize_for_serialization(template)}}],
        },
    }


class KubernetesExecutor(Executor):
    """Creates, polls and deletes Jobs / JobSets in a namespace (kubeconfig or in-cluster credentials).

    Args:
        namespace: where jobs go.
        image: container image of the job pods.
    """

    name = "k8s"

    def __init__(self, namespace: str = "default", image: str = "python:3.11-slim") -> None:
        k = _client()
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            try:
                kubernetes.config.load_kube_config()
            except (kubernetes.config.ConfigException, OSError) as exc:
                raise ExecutorError("k8s", f"no Kubernetes credentials: {exc}",
                                    hint="set KUBECONFIG or run the controller inside the cluster") from exc
        self.namespace, self.image = namespace, image
        self.batch, self.custom = k.BatchV1Api(), k.CustomObjectsApi()
        self._kinds: dict[str, str] = {}

    def launch(self, attempt_name: str, spec: JobSpec, env: dict[str, str]) -> str:
        from kubernetes.client.rest import ApiException

        manifest = build_manifest(attempt_name, spec, env, image=self.image, namespace=self.namespace)
        try:
            if manifest["kind"] == "Job":
                self.batch.create_namespaced_job(self.namespace, manifest)
            else:
                group, version, plural = JOBSET_API
                self.custom.create_namespaced_custom_object(group, version, self.namespace, plural, manifest)
        except ApiException as exc:
            if exc.status != 409:  # 409: it exists already (an earlier controller life created it)
                raise ExecutorError("k8s", f"creating {attempt_name} failed: {exc.reason}") from exc
        self._kinds[attempt_name] = manifest["kind"]
        return attempt_name

    def poll(self, external_id: str) -> Status:
        from kubernetes.client.rest import ApiException

        try:
            if self._kinds.get(external_id, "Job") == "Job":
                status = self.batch.read_namespaced_job_status(external_id, self.namespace).status
                succeeded, failed = status.succeeded or 0, status.failed or 0
            else:
                group, version, plural = JOBSET_API
                obj = self.custom.get_namespaced_custom_object(group, version, self.namespace, plural, external_id)
                conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
                succeeded, failed = conds.get("Completed") == "True", conds.get("Failed") == "True"
        except ApiException as exc:
            if exc.status == 404:
                return Status("lost")
            raise ExecutorError("k8s", f"reading {external_id} failed: {exc.reason}") from exc
        if failed:
            return Status("exited", 1)
        if succeeded:
            return Status("exited", 0)
        return Status("running")

    def stop(self, external_id: str, grace_s: float) -> None:
        if self._kinds.get(external_id, "Job") == "Job":
            self.batch.delete_namespaced_job(external_id, self.namespace, grace_period_seconds=int(grace_s),
                                             propagation_policy="Foreground")
        else:
            group, version, plural = JOBSET_API
            self.custom.delete_namespaced_custom_object(group, version, self.namespace, plural, external_id,
                                                        grace_period_seconds=int(grace_s))
