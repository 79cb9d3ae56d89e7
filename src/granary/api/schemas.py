"""Pydantic models of the API's bodies (the HTTP edge only; the library speaks dataclasses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str
    version: str
    catalog: str
    auth: str


class Whoami(BaseModel):
    name: str
    kind: str
    tenant: str
    scopes: list[str] | None
    clearances: list[str]


class Dataset(BaseModel):
    name: str
    kind: str
    default_branch: str
    description: str
    metadata: dict[str, Any]
    created_at: float
    created_by: str
    head: str | None = Field(None, description="version id at the head of the default branch")


class Version(BaseModel):
    id: str
    dataset: str
    kind: str
    parents: list[str]
    num_rows: int
    num_bytes: int
    num_shards: int
    num_tokens: int | None
    message: str
    author: str
    created_at: float
    state: str


class Ref(BaseModel):
    dataset: str
    kind: str
    name: str
    version_id: str | None
    updated_at: float


class DatasetDetail(Dataset):
    refs: list[Ref]
    num_versions: int
    policy: dict[str, Any]


class VersionDetail(Version):
    schema_: list[dict[str, str]] | None = Field(None, alias="schema")
    lineage: dict[str, Any]
    metadata: dict[str, Any]
    side_tables: list[str]

    model_config = {"populate_by_name": True}


class NewRef(BaseModel):
    name: str = Field(..., min_length=1, max_length=128)
    ref: str | None = Field(None, max_length=300, description="where it starts (default: the default branch head)")


class Preview(BaseModel):
    version: str
    columns: list[str]
    rows: list[dict[str, Any]]


class Samples(BaseModel):
    version: str
    kind: str
    samples_per_epoch: int
    samples: list[dict[str, Any]]


class LineageNode(BaseModel):
    id: str
    dataset: str
    kind: str
    label: str
    created_at: float | None
    num_rows: int | None
    message: str


class LineageEdge(BaseModel):
    source: str
    target: str
    relation: str


class Lineage(BaseModel):
    root: str
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    truncated: bool


class Job(BaseModel):
    id: str
    name: str
    tenant: str
    state: str
    reason: str
    attempt: int
    submit_time: float
    first_start: float | None
    finish_time: float | None
    gpus: int
    priority: int | None = None


class JobEvent(BaseModel):
    seq: int
    from_state: str
    to_state: str
    reason: str
    at: float


class JobAttempt(BaseModel):
    attempt: int
    replica: int
    node: str
    executor: str
    state: str
    exit_code: int | None
    started_at: float | None
    ended_at: float | None


class JobDetail(Job):
    spec: dict[str, Any]
    events: list[JobEvent]
    attempts: list[JobAttempt]
    node_restarts: int
    job_restarts: int
    preemptions: int
    cancel_requested: bool


class Queue(BaseModel):
    tenant: str
    pending: int
    running: int
    gpus_pending: int
    gpus_running: int


class Node(BaseModel):
    name: str
    gpus: int
    gpus_used: int
    cpus: float
    memory_bytes: int
    labels: dict[str, Any]
    status: str
    reason: str
    drain_requested: bool
    last_heartbeat: float
    utilization: float


class AuditEntry(BaseModel):
    seq: int
    at: float
    principal: str
    action: str
    dataset: str
    object: str
    outcome: str
    origin: str
    details: dict[str, Any]
    hash: str


class AuditVerify(BaseModel):
    ok: bool
    records: int
    first_bad: int | None
    reason: str | None
    checkpoints: int
    elapsed_s: float


class GatewayEndpoint(BaseModel):
    model: str
    name: str
    url: str
    weight: float
    job_id: str | None
    heartbeat_at: float
    lease_s: float
    alive: bool


class DayCount(BaseModel):
    day: str
    count: int


class Alert(BaseModel):
    id: int
    detector: str
    severity: str
    summary: str
    labels: dict[str, str]
    starts_at: float
    updated_at: float
    runbook: str
    action: str
    silenced: bool = Field(..., description="a silence mutes its notifications")


class Overview(BaseModel):
    datasets: int
    versions: int
    storage_bytes: int
    versions_per_day: list[DayCount]
    jobs: dict[str, int]
    gpus_total: int
    gpus_used: int
    nodes: dict[str, int]
    audit_records: int
    alerts: list[Alert] = Field(..., description="firing alerts of the monitor, critical first, newest first")


class Run(BaseModel):
    name: str = Field(..., description="the run's checkpoint dataset")
    description: str
    created_at: float
    checkpoints: int = Field(..., description="live checkpoint versions")
    head: str | None = Field(None, description="the newest complete checkpoint (version id)")
    step: int | None = Field(None, description="the step of the newest checkpoint")
    last_checkpoint_at: float | None = None


class RunCheckpoint(BaseModel):
    id: str
    step: int | None
    created_at: float
    num_bytes: int
    state: str


class RunRestart(BaseModel):
    time: float | None = None
    attempt: int | None = None
    cause: str | None = None
    resumed_from: int | None = None
    checkpoint: str | None = None


class RunDetail(BaseModel):
    name: str = Field(..., description="the run's checkpoint dataset")
    run: str = Field(..., description="the recipe's run name")
    status: str = Field(..., description="finished, running (logged in the last 5 minutes) or stopped")
    step: int
    steps: int | None = Field(None, description="the recipe's last step")
    world_size: int | None
    parallel: str | None
    head: str
    last_checkpoint_at: float
    last_logged_at: float | None
    run_dir: str
    data: dict[str, Any] = Field(..., description="the data version(s) it trains on (pinned ids, weights, seed)")
    lineage: dict[str, Any] = Field(..., description="the newest checkpoint's lineage (data, segments, code)")
    recipe: dict[str, Any]
    checkpoints: list[RunCheckpoint] = Field(..., description="newest first (at most 200)")
    restarts: list[RunRestart]
    faults: list[dict[str, Any]]
    last_metrics: dict[str, Any] = Field(..., description="the last logged record")


class CurvePoint(BaseModel):
    step: int
    time: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    step_seconds: float | None = None
    data_seconds: float | None = None
    mfu: float | None = None
    eval_loss: float | None = None
    eval_perplexity: float | None = None


class RunMetrics(BaseModel):
    name: str
    steps_logged: int
    points: list[CurvePoint]


class Accepted(BaseModel):
    id: str
    status: str


class Problem(BaseModel):
    """An error (RFC 9457 problem details): ``detail`` has the CLI's wording, ``hint`` what to do about it."""

    type: str
    title: str
    status: int
    detail: str
    hint: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of the error answers every route can give."""
    schema = Problem.model_json_schema()
    content = {"application/problem+json": {"schema": schema}}
    described = {400: "bad request (malformed reference, cursor, or argument)", 401: "no valid token",
                 403: "the caller's roles do not allow it", 404: "no such resource",
                 409: "conflicts with the current state", 422: "invalid parameters or body"}
    return {code: {"description": text, "content": content} for code, text in described.items()}


class ForgetReceipt(BaseModel):
    id: str
    dataset: str
    subject_digest: str
    match: str
    rows_removed: int
    affected_versions: list[str]
    new_versions: dict[str, str]
    shredded_keys: int
    pending_deletion: list[str]
    derived_datasets: list[str]
    at: float
    signature_ok: bool
