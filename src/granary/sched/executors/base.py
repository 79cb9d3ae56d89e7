"""The executor interface: launch an attempt, poll it, stop it; plus the job environment every executor sets."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from typing import Any

from granary.sched.checkpoint import latest_checkpoint
from granary.sched.model import JobSpec


@dataclass(frozen=True)
class Status:
    """What an executor knows about a launched attempt.

    Attributes:
        state: ``running``, ``exited`` or ``lost`` (the executor no longer knows the job).
        exit_code: set when exited.
    """

    state: str
    exit_code: int | None = None


class Executor:
    """Runs attempts somewhere. Remote executors are driven by the controller through :meth:`drive`."""

    name = ""

    def launch(self, attempt_name: str, spec: JobSpec, env: dict[str, str]) -> str:
        """Start the attempt (idempotent by ``attempt_name``); returns the executor's id for it."""
        raise NotImplementedError

    def poll(self, external_id: str) -> Status:
        """The attempt's status."""
        raise NotImplementedError

    def stop(self, external_id: str, grace_s: float) -> None:
        """SIGTERM now, SIGKILL after ``grace_s`` (or the executor's equivalent)."""
        raise NotImplementedError

    def drive(self, row: Any, spec: JobSpec, now: float) -> dict[str, Any] | None:
        """Advance one attempt row: launch it, pass on a stop request, or collect its exit.

        Returns the column values to update, or None.
        """
        name = f"granary-{row.job_id}-{row.attempt}-{row.replica}"
        if row.state == "assigned":
            env = job_env(spec, job_id=row.job_id, attempt=row.attempt, replica=row.replica, gpu_ids=())
            ext = self.launch(name, spec, env)
            ckpt = latest_checkpoint(spec.checkpoint_dir)
            return dict(state="running", external_id=ext, started_at=now,
                        resumed_step=ckpt[1] if ckpt else None, checkpoint=ckpt[0] if ckpt else None)
        if row.external_id is None:
            return None
        if row.stop_requested and row.stop_reason and row.exit_code is None:
            self.stop(row.external_id, row.grace_s)
        status = self.poll(row.external_id)
        if status.state == "exited":
            return dict(state="exited", exit_code=status.exit_code, ended_at=now)
        if status.state == "lost":
            return dict(state="lost", ended_at=now)
        return None


def command_line(spec: JobSpec) -> str:
    """The job's command as one shell string."""
    if spec.command is None:
        if spec.recipe is None:
            raise ValueError(f"job {spec.name!r} has neither command nor recipe")
        # a `train` job: torchrun's elastic agent, one worker per GPU (one on CPU); a restarted attempt resumes
        # from the newest checkpoint in the store and reports the step (granary.sched.checkpoint.report_resumed)
        # `exec`: the runner then waits on torchrun's agent itself, which on SIGTERM passes it to its workers (they
        # live in sessions of their own), waits for their checkpoint and exits; a shell in between would exit at
        # once and the next attempt (a resize) could start while the old one still saves
        nproc = max(1, spec.gpus_per_replica)
        return (f"exec {shlex.quote(sys.executable)} -m granary.cli.main train {shlex.quote(spec.recipe)} "
                f"--nproc-per-node {nproc}")
    if isinstance(spec.command, str):
        return spec.command
    return shlex.join(spec.command)


def job_env(spec: JobSpec, *, job_id: str, attempt: int, replica: int, gpu_ids: tuple[int, ...],
            report_file: str | None = None) -> dict[str, str]:
    """Environment of a job process: GPUs, identity, and the checkpoint to resume from."""
    env = dict(spec.env)
    env.update(GRANARY_JOB_ID=job_id, GRANARY_ATTEMPT=str(attempt), GRANARY_REPLICA=str(replica),
               GRANARY_NUM_REPLICAS=str(spec.replicas), GRANARY_TENANT=spec.tenant)
    if spec.gpus_per_replica:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if spec.checkpoint_dir:
        env["GRANARY_CHECKPOINT_DIR"] = spec.checkpoint_dir
        found = latest_checkpoint(spec.checkpoint_dir)
        if found is not None:
            env["GRANARY_RESUME_FROM"], env["GRANARY_RESUME_STEP"] = found[0], str(found[1])
    if report_file:
        env["GRANARY_REPORT_FILE"] = report_file
    return env
