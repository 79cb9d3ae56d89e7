"""Slurm executor: sbatch to submit, scontrol/squeue to poll, scancel to stop (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from granary.sched.errors import ExecutorError
from granary.sched.executors.base import Executor, Status, command_line
from granary.sched.model import JobSpec

_RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT"}
_LOST = {"NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmExecutor(Executor):
    """Runs each attempt as one Slurm batch job named ``granary-<job>-<attempt>-<replica>``.

    Submission is idempotent: before ``sbatch``, a job with the same name is looked up, so a controller
    that crashed between submitting and recording the Slurm id never submits twice.

    Args:
        work_dir: where batch scripts and logs go (must be visible to the Slurm nodes).
        partition: Slurm partition (default: the cluster's default).
        timeout_s: limit for each Slurm command.
    """

    name = "slurm"

    def __init__(self, work_dir: str | os.PathLike[str] = "sched-slurm", *, partition: str | None = None,
                 timeout_s: float = 30.0) -> None:
        if shutil.which("sbatch") is None:
            raise ExecutorError("slurm", "sbatch is not on PATH",
                                hint="install Slurm (scripts/slurm-up.sh starts a single-node one)")
        self.work_dir = Path(work_dir).absolute()
        self.partition = partition
        self.timeout_s = timeout_s
        self._term_sent: dict[str, float] = {}

    def _run(self, *argv: str) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExecutorError("slurm", f"{argv[0]} failed: {exc}", hint="is slurmctld running? try `sinfo`") from exc
        if res.returncode != 0:
            raise ExecutorError("slurm", f"{' '.join(argv[:2])} exited {res.returncode}: {res.stderr.strip()}",
                                hint="check `sinfo` and the slurmctld log")
        return res.stdout

    def find(self, attempt_name: str) -> str | None:
        """The Slurm id of a job with this name, if Slurm still knows it."""
        out = self._run("squeue", "-h", "-t", "all", "-n", attempt_name, "-o", "%i")
        ids = out.split()
        return ids[0] if ids else None

    def launch(self, attempt_name: str, spec: JobSpec, env: dict[str, str]) -> str:
        existing = self.find(attempt_name)
        if existing is not None:
            return existing
        self.work_dir.mkdir(parents=True, exist_ok=True)
        script = self.work_dir / f"{attempt_name}.sh"
        lines = ["#!/bin/bash", *(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))]
        if spec.workdir:
            lines.append(f"cd {shlex.quote(spec.workdir)}")
        lines.append(f"exec bash -c {shlex.quote(command_line(spec))}")
        script.write_text("\n".join(lines) + "\n")
        argv = ["sbatch", "--parsable", "-J", attempt_name, "-o", str(self.work_dir / f"{attempt_name}.log"),
                f"--nodes={spec.replicas}", "--ntasks-per-node=1",
                f"--cpus-per-task={max(1, math.ceil(spec.cpus_per_replica))}"]
        if spec.memory_bytes_per_replica:
            argv.append(f"--mem={max(1, spec.memory_bytes_per_replica // 2**20)}M")
        if spec.gpus_per_replica:
            argv.append(f"--gpus-per-node={spec.gpus_per_replica}")
        if self.partition:
            argv.append(f"--partition={self.partition}")
        return self._run(*argv, str(script)).strip().split(";")[0]

    def poll(self, external_id: str) -> Status:
        try:
            out = self._run("scontrol", "show", "job", "-o", external_id)
        except ExecutorError as exc:
            if "Invalid job id" in str(exc):
                return Status("lost")
            raise
        state = re.search(r"JobState=(\S+)", out)
        code = re.search(r"ExitCode=(\d+):(\d+)", out)
        name = state.group(1) if state else "UNKNOWN"
        if name in _RUNNING:
            return Status("running")
        if name in _LOST:
            return Status("lost")
        rc, sig = (int(code.group(1)), int(code.group(2))) if code else (1, 0)
        if name == "CANCELLED" and not rc:
            rc = 128 + (sig or 15)
        return Status("exited", rc if not sig else 128 + sig)

    def stop(self, external_id: str, grace_s: float) -> None:
        sent = self._term_sent.get(external_id)
        if sent is None:
            self._term_sent[external_id] = time.monotonic()
            self._run("scancel", "--signal=TERM", "--full", external_id)
        elif time.monotonic() - sent >= grace_s:
            self._run("scancel", "--signal=KILL", "--full", external_id)
