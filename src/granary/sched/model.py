"""The scheduler's data model: job and node specs, their live records, states, transitions and decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from granary.sched.errors import InvalidJobError

JobState = Literal["pending", "admitted", "running", "succeeded", "failed", "preempted", "cancelled"]
NodeStatus = Literal["up", "draining", "down"]
FailureCause = Literal["node", "job"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"admitted", "running"})

EXECUTOR_NAMES: tuple[str, ...] = ("local", "slurm", "ray", "k8s")  # granary.sched.executors.EXECUTORS
MAX_REPLICAS = 100_000  # more than any cluster has nodes; a larger count is a typo
MAX_GPUS_PER_REPLICA = 1024  # a replica runs on one node

# Every allowed state change. "preempted" is transient: a preempted job goes back to pending at once.
# running -> admitted is a resize: the attempt stops and the next one is placed at the new size.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"admitted", "cancelled", "failed"}),
    "admitted": frozenset({"running", "pending", "cancelled", "failed", "succeeded", "preempted"}),
    "running": frozenset({"succeeded", "failed", "preempted", "cancelled", "pending", "admitted"}),
    "preempted": frozenset({"pending", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


@dataclass(kw_only=True, frozen=True)
class JobSpec:
    """What to run and what it needs.

    Attributes:
        name: a human name (not unique).
        tenant: the queue / team the job is charged to (fair share and quotas work per tenant).
        command: argv list or a shell string (local, Slurm and Ray executors).
        recipe: a training recipe file (YAML, see docs/train.md), as an alternative to ``command``: a ``train``
            job, run as ``granary train RECIPE --nproc-per-node max(1, gpus_per_replica)``.
        gpus_per_replica: GPUs each replica needs (all on one node).
        cpus_per_replica: CPU cores each replica needs.
        memory_bytes_per_replica: RAM each replica needs.
        replicas: number of replicas (processes / pods).
        gang: start all replicas together or none.
        priority: larger runs first under the ``priority`` policy.
        duration_estimate_s: optional runtime estimate (SJF, EASY backfill).
        max_restarts: retries after the job itself fails (non-zero exit).
        max_node_restarts: retries after a node failure (separate budget).
        checkpoint_dir: where the job writes ``step_<N>/`` checkpoints with a ``_COMPLETE`` marker.
        depends_on: ids of jobs that must succeed first.
        node_selector: labels a node must carry (e.g. ``{"gpu": "a100"}``).
        data_hint: dataset the job reads; nodes that cache it are preferred.
        env: extra environment variables.
        workdir: working directory of the job's processes.
        executor: where it runs: ``local``, ``slurm``, ``ray`` or ``k8s``.
        grace_s: seconds between SIGTERM and SIGKILL on preemption or cancel.
        gang_timeout_s: an admitted gang whose replicas are not all running by then is released and requeued.
        resizable: the scheduler may change the job's GPU count while it runs (through its checkpoint: stop at a
            step boundary, save, restart at the new size); ``gpus_per_replica * replicas`` is the starting size.
        min_gpus: the fewest GPUs a resizable job runs on (default: 1).
        max_gpus: the most GPUs a resizable job runs on (default: its starting size).
        batch_size: the preferred global batch size (what the job's hyper-parameters were tuned for).
        min_batch_size: the smallest global batch size the scheduler may choose (default: ``batch_size``).
        max_batch_size: the largest global batch size the scheduler may choose (default: ``batch_size``).
    """

    name: str
    tenant: str = "default"
    command: tuple[str, ...] | str | None = None
    recipe: str | None = None
    gpus_per_replica: int = 0
    cpus_per_replica: float = 1.0
    memory_bytes_per_replica: int = 0
    replicas: int = 1
    gang: bool = True
    priority: int = 0
    duration_estimate_s: float | None = None
    max_restarts: int = 0
    max_node_restarts: int = 3
    checkpoint_dir: str | None = None
    depends_on: tuple[str, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    data_hint: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    executor: str = "local"
    grace_s: float = 10.0
    gang_timeout_s: float = 300.0
    resizable: bool = False
    min_gpus: int | None = None
    max_gpus: int | None = None
    batch_size: int | None = None
    min_batch_size: int | None = None
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 128:
            raise InvalidJobError("name", f"must be 1-128 characters, got {self.name!r}")
        if not self.tenant or len(self.tenant) > 64:
            raise InvalidJobError("tenant", f"must be 1-64 characters, got {self.tenant!r}")
        if isinstance(self.command, list):
            object.__setattr__(self, "command", tuple(self.command))
        if isinstance(self.depends_on, list):
            object.__setattr__(self, "depends_on", tuple(self.depends_on))
        for name in ("gpus_per_replica", "memory_bytes_per_replica", "max_restarts", "max_node_restarts"):
            if getattr(self, name) < 0:
                raise InvalidJobError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise InvalidJobError("replicas", f"must be 1-{MAX_REPLICAS:,}, got {self.replicas}")
        if self.gpus_per_replica > MAX_GPUS_PER_REPLICA:
            raise InvalidJobError("gpus_per_replica", f"must be at most {MAX_GPUS_PER_REPLICA} (GPUs of one node), "
                                                      f"got {self.gpus_per_replica}")
        if self.executor not in EXECUTOR_NAMES:
            raise InvalidJobError("executor", f"must be one of {', '.join(EXECUTOR_NAMES)}, got {self.executor!r}")
        if self.cpus_per_replica < 0:
            raise InvalidJobError("cpus_per_replica", f"must be >= 0, got {self.cpus_per_replica}")
        if self.duration_estimate_s is not None and self.duration_estimate_s <= 0:
            raise InvalidJobError("duration_estimate_s", f"must be > 0, got {self.duration_estimate_s}")
        if self.grace_s < 0 or self.gang_timeout_s <= 0:
            raise InvalidJobError("grace_s", "grace_s must be >= 0 and gang_timeout_s > 0")
        _check_elastic(self)
        # Computed once (a spec is immutable; policies ask for it in every pass) and set here, in every instance
        # in the same order, so instances keep sharing their attribute layout (fast attribute access).
        object.__setattr__(self, "_shape", (self.gpus_per_replica, self.cpus_per_replica,
                                            self.memory_bytes_per_replica, self.replicas,
                                            tuple(sorted(self.node_selector.items()))))

    @property
    def gpus(self) -> int:
        """Total GPUs of the job (all replicas)."""
        return self.gpus_per_replica * self.replicas

    @property
    def gpu_range(self) -> tuple[int, int]:
        """(fewest, most) GPUs the job may run on; both equal its size when it is not resizable."""
        if not self.resizable:
            return self.gpus, self.gpus
        return self.min_gpus or 1, self.max_gpus or self.gpus

    @property
    def batch_range(self) -> tuple[int, int] | None:
        """(smallest, largest) global batch size the scheduler may choose; None when the job names no batch size."""
        if self.batch_size is None:
            return None
        return self.min_batch_size or self.batch_size, self.max_batch_size or self.batch_size

    def resized(self, gpus: int, gpus_per_node: int) -> JobSpec:
        """This spec at another size: ``gpus`` split into as few equal replicas as nodes of ``gpus_per_node`` allow.

        Raises:
            InvalidJobError: the job is not resizable, or ``gpus`` lies outside its range.
        """
        lo, hi = self.gpu_range
        if not self.resizable or not lo <= gpus <= hi:
            raise InvalidJobError("gpus", f"job {self.name!r} cannot run on {gpus} GPUs (resizable={self.resizable}, "
                                          f"range {lo}-{hi})")
        replicas = max(1, -(-gpus // max(1, gpus_per_node)))
        while gpus % replicas:
            replicas += 1
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(gpus_per_replica=gpus // replicas, replicas=replicas)
        return JobSpec(**fields)

    @property
    def shape(self) -> tuple[int, float, int, int, tuple[tuple[str, str], ...]]:
        """Resource shape: jobs with the same shape fit exactly the same places.

        Set once in ``__post_init__`` as a plain attribute, not a field (so ``to_dict`` and the field list are
        unchanged). It is read as an attribute: touching ``__dict__``, as ``functools.cached_property`` does, turns
        off CPython's fast attribute access for the instance (every spec attribute read got ~3x slower).
        """
        return self._shape  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the inverse of :meth:`from_dict`)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["command"] = list(self.command) if isinstance(self.command, tuple) else self.command
        out["depends_on"] = list(self.depends_on)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> JobSpec:
        """Build a spec from a dict (YAML / JSON), naming the unknown field if any."""
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise InvalidJobError(key, "is not a job field", source=source)
        try:
            return cls(**data)
        except InvalidJobError as exc:
            if source is None or exc.source is not None:
                raise
            raise InvalidJobError(exc.field, exc.reason, source=source) from exc
        except TypeError as exc:
            raise InvalidJobError("?", str(exc), source=source) from exc


def _check_elastic(spec: JobSpec) -> None:
    """Validate the elastic fields of a spec (each error names the field and what to change)."""
    for name in ("min_gpus", "max_gpus", "batch_size", "min_batch_size", "max_batch_size"):
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidJobError(name, f"must be a whole number >= 1, got {value!r}")
    if not spec.resizable and (spec.min_gpus is not None or spec.max_gpus is not None):
        raise InvalidJobError("min_gpus", "min_gpus/max_gpus need resizable: true (or remove them)")
    if spec.resizable:
        if spec.gpus < 1:
            raise InvalidJobError("resizable", "a resizable job needs GPUs: set gpus_per_replica >= 1")
        lo, hi = spec.gpu_range
        if lo > hi:
            raise InvalidJobError("min_gpus", f"min_gpus ({lo}) is above max_gpus ({hi}); swap or fix them")
        if not lo <= spec.gpus <= hi:
            raise InvalidJobError("gpus_per_replica", f"the starting size ({spec.gpus} GPUs = gpus_per_replica x "
                                  f"replicas) must lie in min_gpus..max_gpus ({lo}..{hi})")
    if spec.batch_size is None:
        if spec.min_batch_size is not None or spec.max_batch_size is not None:
            raise InvalidJobError("batch_size", "min_batch_size/max_batch_size need batch_size (the preferred one)")
        return
    blo, bhi = spec.batch_range or (0, 0)
    if not blo <= spec.batch_size <= bhi:
        raise InvalidJobError("batch_size", f"the preferred batch size {spec.batch_size} must lie in "
                              f"min_batch_size..max_batch_size ({blo}..{bhi})")


@dataclass(kw_only=True, frozen=True)
class NodeSpec:
    """A machine that runs jobs.

    Attributes:
        name: unique node name.
        gpus: GPU count.
        cpus: CPU cores.
        memory_bytes: RAM.
        labels: e.g. ``{"rack": "r1", "zone": "z1", "gpu": "h100", "weight": "2"}``.
    """

    name: str
    gpus: int = 0
    cpus: float = 1.0
    memory_bytes: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("node name must not be empty")
        if self.gpus < 0 or self.cpus < 0 or self.memory_bytes < 0:
            raise ValueError(f"node {self.name}: gpus, cpus and memory_bytes must be >= 0")


# A placement: one (node index, GPU ids) pair per replica.
Placement = tuple[tuple[int, tuple[int, ...]], ...]


@dataclass(slots=True, eq=False)
class Node:
    """Live state of a node inside :class:`~granary.sched.state.SchedulerState`."""

    index: int
    spec: NodeSpec
    status: str = "up"
    free_gpu_ids: list[int] = field(default_factory=list)
    free_cpus: float = 0.0
    free_memory: int = 0
    last_heartbeat: float = 0.0
    utilization: float = 0.0
    cached: frozenset[str] = frozenset()
    recent_failures: int = 0
    jobs: set[str] = field(default_factory=set)

    @property
    def free_gpus(self) -> int:
        """GPUs not assigned to any job."""
        return len(self.free_gpu_ids)


@dataclass(slots=True, eq=False)
class Job:
    """Live state of a job inside :class:`~granary.sched.state.SchedulerState`."""

    id: str
    spec: JobSpec
    submit_time: float
    state: str = "pending"
    attained_gpu_s: float = 0.0
    run_s: float = 0.0
    started_at: float | None = None
    first_start: float | None = None
    finish_time: float | None = None
    placement: Placement | None = None
    attempt: int = 0
    node_restarts: int = 0
    job_restarts: int = 0
    preemptions: int = 0
    not_before: float = 0.0
    pending_since: float = 0.0
    last_run_s: float = 0.0
    key: tuple[Any, ...] = ()
    token: int = 0
    blocked_on: set[str] = field(default_factory=set)
    level: int = 0
    starved: bool = False
    resumed_step: int | None = None
    checkpoint: str | None = None
    reason: str = ""
    resizes: int = 0
    resized_at: float | None = None
    resumed_attempt: int = 0  # the latest attempt that reported the checkpoint step it resumed from (it is up)
    batch_size: int | None = None

    @property
    def gpus(self) -> int:
        """Total GPUs of the job."""
        return self.spec.gpus


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded state change of a job."""

    job_id: str
    from_state: str
    to_state: str
    reason: str
    correlation_id: str
    at: float


@dataclass(frozen=True, slots=True)
class StartDecision:
    """Start (admit) a job on these resources."""

    job_id: str
    attempt: int
    placement: Placement
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PreemptDecision:
    """Stop a running job (SIGTERM, then SIGKILL after ``grace_s``) and requeue it."""

    job_id: str
    attempt: int
    grace_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class ResizeDecision:
    """Change a running job's size: stop attempt ``attempt`` at a step boundary (SIGTERM: it checkpoints), then
    start attempt ``attempt + 1`` on ``placement`` with ``gpus`` GPUs and global batch ``batch_size``."""

    job_id: str
    attempt: int
    placement: Placement
    nodes: tuple[str, ...]
    gpus: int
    batch_size: int | None
    grace_s: float
    reason: str

    @property
    def new_attempt(self) -> int:
        """The attempt that runs at the new size."""
        return self.attempt + 1


Decision = StartDecision | PreemptDecision | ResizeDecision
