"""Pydantic bodies of the model-registry routes (``/models``; the library's dataclasses are in granary.models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelSummary(BaseModel):
    name: str
    versions: int = Field(..., description="registered versions")
    latest: int = Field(..., description="the newest version number")
    latest_method: str = Field(..., description="how the newest version was made (registered, int8-dynamic, ...)")
    aliases: dict[str, int] = Field(..., description="alias -> version number")
    updated_at: float = Field(..., description="when the newest version was registered")


class ModelVersionOut(BaseModel):
    name: str
    version: int
    ref: str = Field(..., description="name@version")
    method: str
    parent: int | None = Field(None, description="the version it was made from (compression, distillation)")
    store_version: str = Field(..., description="the version of dataset model.<name> holding its files")
    size_bytes: int | None = None
    aliases: list[str] = Field(..., description="aliases pointing at this version")
    created_at: float
    created_by: str
    facts: dict[str, Any] = Field(..., description="architecture, checkpoint, data versions, measurements")


class ModelPolicy(BaseModel):
    """The merged policy of the data a version was trained on (every dataset on its lineage walk)."""

    licenses: list[str]
    purposes: list[str] | None = Field(None, description="allowed purposes; null: unrestricted")
    tags: list[str]
    conflicts: list[str]
    datasets: list[str] = Field(..., description="the datasets whose policies were merged")
    production_allowed: bool = Field(..., description="whether `production` may point at it without an override")


class ModelLineage(BaseModel):
    """A summary of a version's lineage walk back to raw data (``GET /models/{name}/versions/{n}/lineage``-style
    detail is the CLI's ``granary model show --json``)."""

    version: int
    checkpoint: dict[str, Any] | None
    data_versions: list[str] = Field(..., description="the training data versions (ids)")
    datasets: list[str] = Field(..., description="every data set on the walk to raw data")
    roots: list[str] = Field(..., description="nodes nothing else was derived from (raw data)")
    nodes: int
    edges: int


class ModelEvaluation(BaseModel):
    version: int
    data: str = Field(..., description="the held-out tokens version id")
    shards: int
    seq_len: int
    samples: int | None = Field(None, description="samples evaluated (null: recorded before this was kept)")
    perplexity: float
    accuracy: float
    loss: float
    tokens: int


class ModelDeployment(BaseModel):
    version: int
    role: str
    served_as: str
    replicas: int
    weight: float
    state: str
    job_ids: list[str]
    updated_at: float


class ModelEvent(BaseModel):
    id: int
    version: int | None
    action: str = Field(..., description="register, alias, alias-refused, override, eval, deploy, ...")
    actor: str
    at: float
    details: dict[str, Any]
    override: bool = Field(..., description="an alias move made against data policy with an audited reason")


class ModelAlias(BaseModel):
    alias: str
    version: int
    moved_at: float


class ModelDetail(BaseModel):
    name: str
    latest: int
    versions: list[ModelVersionOut] = Field(..., description="newest first (at most 100; see /versions to page)")
    aliases: list[ModelAlias]
    lineage: ModelLineage = Field(..., description="of the version `production` points at, else the newest")
    policy: ModelPolicy = Field(..., description="of the same version")
    evaluations: list[ModelEvaluation]
    deployments: list[ModelDeployment]


class AliasMove(BaseModel):
    version: int = Field(..., ge=1, description="the version the alias should point at")
    override: str | None = Field(None, min_length=3, max_length=500,
                                 description="a reason for moving `production` against data policy (audited)")


class AliasMoved(BaseModel):
    name: str
    alias: str
    version: int
    previous: int | None = Field(None, description="the version the alias pointed at before (null: new alias)")
    override: bool = Field(..., description="an override reason was given and recorded with the move")
