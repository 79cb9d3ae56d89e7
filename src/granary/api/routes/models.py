"""The model registry over HTTP: models, versions, aliases (and moving one), evaluations, deployments, events.

Every read goes through the request's store view: :class:`granary.models.registry.Registry` authorises a look at
``model.<name>`` as a ``list`` on that dataset (audited), and the model list keeps only the models the caller may
see. Moving an alias is what ``granary model alias`` does, through the same call: a ``write`` on ``model.<name>``,
the data-policy check for ``production`` (refused with 409 unless an ``override`` reason is given, which is
audited), an optional regression gate, and an event in the model's trail.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query

from granary.api.deps import Context, Ctx
from granary.api.model_schemas import (
    AliasMove,
    AliasMoved,
    ModelAlias,
    ModelDeployment,
    ModelDetail,
    ModelEvaluation,
    ModelEvent,
    ModelLineage,
    ModelPolicy,
    ModelSummary,
    ModelVersionOut,
)
from granary.api.paging import DEFAULT_PAGE, MAX_PAGE, Page, decode_cursor, encode_cursor, page_limit
from granary.models import tables as t
from granary.models.errors import ModelNotFoundError
from granary.models.registry import NON_PRODUCTION, ModelVersion, Registry, dataset_of

router = APIRouter(prefix="/models", tags=["models"])
VERSIONS_SHOWN = 100
NamePath = Path(..., min_length=1, max_length=63, description="the model's name")


@router.get("", response_model=Page[ModelSummary])
def list_models(ctx: Ctx, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
                cursor: str | None = None) -> Page[ModelSummary]:
    """Registered models the caller may see, by name, with their version count, newest version and aliases."""
    key = decode_cursor(cursor, (str,))
    n = page_limit(limit)
    v = t.versions.c
    with ctx.catalog.read() as conn:
        q = (sa.select(v.name, sa.func.count().label("versions"), sa.func.max(v.version).label("latest"))
             .group_by(v.name).order_by(v.name).limit(n))
        rows = conn.execute(q.where(v.name > key[0]) if key else q).all()
        names = [r.name for r in rows]
        pairs = [(r.name, r.latest) for r in rows]
        newest = {(r.name, r.version): r for r in conn.execute(
            sa.select(v.name, v.version, v.method, v.created_at).where(sa.tuple_(v.name, v.version).in_(pairs)))
            } if names else {}
        alias_rows = conn.execute(sa.select(t.aliases).where(t.aliases.c.name.in_(names))).all() if names else []
    visible = ctx.store.gate.visible(dataset_of(name) for name in names)
    aliases: dict[str, dict[str, int]] = {}
    for a in alias_rows:
        aliases.setdefault(a.name, {})[a.alias] = int(a.version)
    items = [ModelSummary(name=r.name, versions=int(r.versions), latest=int(r.latest),
                          latest_method=newest[(r.name, r.latest)].method,
                          aliases=dict(sorted(aliases.get(r.name, {}).items())),
                          updated_at=newest[(r.name, r.latest)].created_at)
             for r in rows if dataset_of(r.name) in visible]
    return Page[ModelSummary](items=items, next_cursor=encode_cursor([rows[-1].name]) if len(rows) == n else None)


def _versions(registry: Registry, name: str) -> list[ModelVersion]:
    versions = registry.versions(name)  # authorised as a look at model.<name>
    if not versions:
        raise ModelNotFoundError(f"model {name} does not exist",
                                 hint="list models with GET /models; register one with "
                                      "`granary model register CKPT --name NAME`")
    return versions


def _version_out(mv: ModelVersion, aliases: dict[str, int]) -> ModelVersionOut:
    return ModelVersionOut(name=mv.name, version=mv.version, ref=mv.ref, method=mv.method, parent=mv.parent,
                           store_version=mv.store_version, size_bytes=mv.facts.get("size_bytes"),
                           aliases=sorted(a for a, v in aliases.items() if v == mv.version),
                           created_at=mv.created_at, created_by=mv.created_by, facts=mv.facts)


def _evaluations(ctx: Context, name: str) -> list[ModelEvaluation]:
    from granary.models.evaluate import model_results

    return [ModelEvaluation(version=number, data=r["data"], shards=r["shards"], seq_len=r["seq_len"],
                            samples=r.get("samples"), perplexity=r["metrics"]["perplexity"],
                            accuracy=r["metrics"]["accuracy"], loss=r["metrics"]["loss"],
                            tokens=int(r["metrics"]["tokens"]))
            for number, found in sorted(model_results(ctx.store, name).items()) for r in found]


def _deployments(registry: Registry, name: str) -> list[ModelDeployment]:
    from granary.models.deploy import Deployer

    return [ModelDeployment(version=d.version, role=d.role, served_as=d.served_as, replicas=d.replicas,
                            weight=d.weight, state=d.state, job_ids=list(d.job_ids), updated_at=d.updated_at)
            for d in Deployer(registry).deployments(name, active=False)]


def _lineage_and_policy(ctx: Context, mv: ModelVersion) -> tuple[ModelLineage, ModelPolicy]:
    from granary.models.lineage import data_datasets, data_policy, lineage_graph

    graph = lineage_graph(ctx.store, mv)
    policy = data_policy(ctx.store, mv, graph=graph)
    lineage = ModelLineage(version=mv.version, checkpoint=mv.facts.get("checkpoint"),
                           data_versions=[str(x) for x in (mv.facts.get("data") or {}).get("versions") or []],
                           datasets=data_datasets(ctx.store, mv, graph=graph), roots=list(graph["roots"]),
                           nodes=len(graph["nodes"]), edges=len(graph["edges"]))
    purposes = None if policy.purposes is None else sorted(policy.purposes)
    allowed = policy.purposes is None or bool(policy.purposes - NON_PRODUCTION)
    return lineage, ModelPolicy(licenses=sorted(policy.licenses), purposes=purposes, tags=sorted(policy.tags),
                                conflicts=list(policy.conflicts), datasets=sorted(policy.sources),
                                production_allowed=allowed)


@router.get("/{name}", response_model=ModelDetail)
def model(ctx: Ctx, name: str = NamePath) -> ModelDetail:
    """A model: its versions (newest first), aliases, the lineage summary and data policy of the version
    `production` points at (else the newest), its evaluations and deployments."""
    registry = Registry(ctx.store)
    versions = _versions(registry, name)
    moves = registry.alias_moves(name)
    aliases = {m["alias"]: m["version"] for m in moves}
    by_number = {mv.version: mv for mv in versions}
    shown = by_number.get(aliases.get("production", -1)) or versions[-1]
    lineage, policy = _lineage_and_policy(ctx, shown)
    return ModelDetail(name=name, latest=versions[-1].version,
                       versions=[_version_out(mv, aliases) for mv in versions[::-1][:VERSIONS_SHOWN]],
                       aliases=[ModelAlias(**m) for m in moves], lineage=lineage, policy=policy,
                       evaluations=_evaluations(ctx, name), deployments=_deployments(registry, name))


@router.get("/{name}/versions", response_model=Page[ModelVersionOut])
def versions(ctx: Ctx, name: str = NamePath, limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
             cursor: str | None = None) -> Page[ModelVersionOut]:
    """A model's versions, newest first."""
    key = decode_cursor(cursor, (int,))
    registry = Registry(ctx.store)
    every = _versions(registry, name)[::-1]
    aliases = registry.aliases(name)
    rest = [mv for mv in every if key is None or mv.version < key[0]]
    n = page_limit(limit)
    page = rest[:n]
    nxt = encode_cursor([page[-1].version]) if len(rest) > n else None
    return Page[ModelVersionOut](items=[_version_out(mv, aliases) for mv in page], next_cursor=nxt)


@router.get("/{name}/aliases", response_model=list[ModelAlias])
def aliases(ctx: Ctx, name: str = NamePath) -> list[ModelAlias]:
    """A model's aliases and the version each points at."""
    registry = Registry(ctx.store)
    _versions(registry, name)
    return [ModelAlias(**m) for m in registry.alias_moves(name)]


@router.get("/{name}/evaluations", response_model=list[ModelEvaluation])
def evaluations(ctx: Ctx, name: str = NamePath) -> list[ModelEvaluation]:
    """Finished evaluations of every version (perplexity, accuracy, loss on a held-out tokens version)."""
    _versions(Registry(ctx.store), name)
    return _evaluations(ctx, name)


@router.get("/{name}/deployments", response_model=list[ModelDeployment])
def deployments(ctx: Ctx, name: str = NamePath) -> list[ModelDeployment]:
    """Deployments of the model's versions, past and present (serving, canary, rolled back, stopped)."""
    registry = Registry(ctx.store)
    _versions(registry, name)
    return _deployments(registry, name)


@router.get("/{name}/events", response_model=Page[ModelEvent])
def events(ctx: Ctx, name: str = NamePath, action: str | None = Query(None, max_length=32),
           limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE), cursor: str | None = None) -> Page[ModelEvent]:
    """The model's trail, oldest first: registrations, alias moves (``override`` marks a move made against data
    policy), refusals, evaluations and deployments; ``action`` keeps one kind."""
    key = decode_cursor(cursor, (int,))
    registry = Registry(ctx.store)
    _versions(registry, name)
    n = page_limit(limit)
    rows = registry.events(name, after=key[0] if key else None, limit=None if action else n)
    if action:
        rows = [e for e in rows if e["action"] == action][:n]
    items = [_event(e) for e in rows]
    return Page[ModelEvent](items=items, next_cursor=encode_cursor([rows[-1]["id"]]) if len(rows) == n else None)


def _event(e: dict[str, Any]) -> ModelEvent:
    details = dict(e["details"])
    return ModelEvent(id=e["id"], version=e["version"], action=e["action"], actor=e["actor"], at=e["at"],
                      details=details, override=e["action"] == "override" or bool(details.get("override")))


@router.post("/{name}/aliases/{alias}", response_model=AliasMoved)
def move_alias(ctx: Ctx, body: AliasMove, name: str = NamePath,
               alias: str = Path(..., min_length=1, max_length=64),
               gate_data: str | None = Query(None, max_length=300, description="block the move if the version "
                                             "regresses on this tokens version against the alias's current one"),
               gate_metric: Literal["perplexity", "loss", "accuracy"] = "perplexity",
               gate_max_change: float = Query(0.01, ge=0, le=10)) -> AliasMoved:
    """Point ``alias`` at ``body.version``: a write on ``model.<name>`` (writer role), audited. ``production``
    is refused (409) when the version's training data may only be used for research or evaluation, unless
    ``override`` gives a reason, which is recorded as an audited override."""
    from granary.models.evaluate import Gate

    registry = Registry(ctx.store)
    previous = registry.aliases(name).get(alias)
    gate = Gate(data=gate_data, metric=gate_metric, max_change=gate_max_change) if gate_data else None
    mv = registry.set_alias(f"{name}@{body.version}", alias, override=body.override, gate=gate)
    return AliasMoved(name=mv.name, alias=alias, version=mv.version, previous=previous,
                      override=bool(body.override))
