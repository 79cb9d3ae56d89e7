"""Scheduler errors: bad job specs, unknown jobs or nodes, illegal transitions, executor failures."""

from __future__ import annotations

from granary.errors import SchedError


class InvalidJobError(SchedError, ValueError):
    """A job spec is malformed; carries the field (and the file when read from YAML)."""

    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(
            f"{where}job field {field!r} {reason}",
            hint="fix the job spec (see docs/sched.md, 'Job spec') and submit again",
        )


class JobNotFoundError(SchedError, LookupError):
    """No job with this id (or name) exists."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}", hint="list jobs with `granary jobs --all`")


class NodeNotFoundError(SchedError, LookupError):
    """No node with this name is registered."""

    def __init__(self, node: str) -> None:
        self.node = node
        super().__init__(f"no node {node!r}", hint="list nodes with `granary nodes`")


class TransitionError(SchedError):
    """A job state change that the state machine does not allow."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        self.job_id = job_id
        self.current = current
        self.target = target
        super().__init__(
            f"job {job_id} cannot go from {current} to {target}",
            hint="the job has probably finished or was cancelled meanwhile; check `granary job ID`",
        )


class UnknownNameError(SchedError, ValueError):
    """A policy, placement or executor name that is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"unknown {kind} {name!r}", hint=f"choose one of: {', '.join(sorted(known))}")


class ExecutorError(SchedError):
    """An executor could not launch, query or stop a job."""

    def __init__(self, executor: str, message: str, *, hint: str | None = None) -> None:
        self.executor = executor
        super().__init__(f"{executor} executor: {message}", hint=hint)


class TraceError(SchedError, ValueError):
    """A job trace file is missing a column or has a bad value."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(
            f"bad trace {where}: {reason}",
            hint="a trace is a CSV with columns timestamp, duration, num_gpus[, gpu_time, cluster]",
        )
