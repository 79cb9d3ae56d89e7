"""Ray executor: the Ray Job API (submit, status, stop) against a Ray cluster's dashboard address."""

from __future__ import annotations

from typing import Any

from granary.errors import MissingDependencyError
from granary.sched.errors import ExecutorError
from granary.sched.executors.base import Executor, Status, command_line
from granary.sched.model import JobSpec


class RayExecutor(Executor):
    """Runs each attempt as a Ray job whose submission id is the attempt name (so resubmission is a no-op).

    Args:
        address: the Ray dashboard address, e.g. ``http://127.0.0.1:8265``.
    """

    name = "ray"

    def __init__(self, address: str = "http://127.0.0.1:8265") -> None:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:
            raise MissingDependencyError("ray", "ray") from exc
        try:
            self.client: Any = JobSubmissionClient(address)
        except Exception as exc:  # the client raises ConnectionError or RuntimeError variants
            raise ExecutorError("ray", f"cannot reach Ray at {address}: {exc}",
                                hint="start Ray with `ray start --head` (dashboard on port 8265)") from exc

    def launch(self, attempt_name: str, spec: JobSpec, env: dict[str, str]) -> str:
        try:
            self.client.get_job_info(attempt_name)
            return attempt_name  # already submitted by an earlier controller life
        except RuntimeError:
            pass
        runtime_env: dict[str, Any] = {"env_vars": env}
        if spec.workdir:
            runtime_env["working_dir"] = spec.workdir
        resources: dict[str, Any] = {}
        if spec.gpus_per_replica:
            resources["entrypoint_num_gpus"] = spec.gpus_per_replica
        if spec.cpus_per_replica:
            resources["entrypoint_num_cpus"] = spec.cpus_per_replica
        self.client.submit_job(entrypoint=command_line(spec), submission_id=attempt_name, runtime_env=runtime_env,
                               **resources)
        return attempt_name

    def poll(self, external_id: str) -> Status:
        try:
            status = str(self.client.get_job_status(external_id))
        except RuntimeError:
            return Status("lost")
        status = status.rsplit(".", 1)[-1]
        if status in ("PENDING", "RUNNING"):
            return Status("running")
        if status == "SUCCEEDED":
            return Status("exited", 0)
        if status == "STOPPED":
            return Status("exited", 143)
        return Status("exited", 1)

    def stop(self, external_id: str, grace_s: float) -> None:
        self.client.stop_job(external_id)  # Ray sends SIGTERM, then SIGKILL after its own grace period
