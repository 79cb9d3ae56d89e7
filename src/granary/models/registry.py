"""The model registry: model versions as store versions of ``model.<name>``, numbered, with aliases that move.

A model version is registered from a training checkpoint (or made from another version by compression or
distillation). Its files (safetensors, config, HF layout) are one version of the checkpoint-kind dataset
``model.<name>`` whose lineage names the checkpoint and the data versions it was trained on, so the store's
policy propagation gives the model dataset its data's restrictions. The catalog keeps the version numbers,
the aliases (``staging``, ``production``...) and an audit trail of every alias move and override.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from granary.models import tables as t
from granary.models.errors import ModelError, ModelNotFoundError, PromotionRefusedError

if TYPE_CHECKING:
    from torch import nn

    from granary.store import Store

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
NON_PRODUCTION = frozenset({"research", "evaluation"})  # data limited to these cannot ship


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version.

    Attributes:
        name: the model's name.
        version: 1, 2, ... per name.
        store_version: the store version (of dataset ``model.<name>``) holding its files.
        parent: the version it was made from (compression, distillation), or None.
        method: ``registered`` (from a checkpoint), ``int8-dynamic``, ``int4``, ``int8-weight``, ``int4-weight``,
            ``pruned-magnitude``, ``pruned-structured``, ``distilled``.
        facts: architecture, checkpoint, data versions, size, measurements.
    """

    name: str
    version: int
    store_version: str
    parent: int | None
    method: str
    facts: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    created_by: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def dataset(self) -> str:
        return dataset_of(self.name)


def dataset_of(name: str) -> str:
    """The store dataset that holds a model's files."""
    return f"model.{name}"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ModelError(f"invalid model name {name!r}", hint="use 1-63 characters of a-z, 0-9, '_' or '-'")
    return name


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name``, ``name@3``, ``name@production`` -> (name, version-or-alias or None)."""
    name, _, at = ref.partition("@")
    return check_name(name), at or None


def actor(store: Store) -> str:
    """Who acts: the store's bound principal when the security layer is on, else the OS user."""
    principal = getattr(getattr(store.hooks, "guard", None), "principal", None)
    if principal is not None:
        return str(principal.name)
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


class Registry:
    """Register, look up, load and alias model versions.

    Args:
        store: the store (files go through its commit; checkpoints and data are read through its gate).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.catalog = store.catalog

    # -- lookups (metadata reads of ``model.<name>``, authorised and audited by the store's read gate) -----
    def _may_list(self, name: str) -> None:
        self.store.gate.allow("list", dataset_of(check_name(name)))

    def versions(self, name: str) -> list[ModelVersion]:
        """A model's versions, oldest first (empty when it has none)."""
        self._may_list(name)
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.versions).where(t.versions.c.name == check_name(name))
                                .order_by(t.versions.c.version)).all()
        return [_row(r) for r in rows]

    def models(self) -> list[str]:
        """The names of the models the store view may see."""
        with self.catalog.read() as conn:
            names = list(conn.execute(sa.select(t.versions.c.name).distinct().order_by(t.versions.c.name)).scalars())
        visible = self.store.gate.visible(dataset_of(n) for n in names)
        return [n for n in names if dataset_of(n) in visible]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number of a model."""
        self._may_list(name)
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.aliases).where(t.aliases.c.name == name)).all()
        return {r.alias: int(r.version) for r in rows}

    def get(self, ref: str) -> ModelVersion:
        """Resolve ``name`` (newest), ``name@N`` or ``name@alias``."""
        name, at = parse_ref(ref)
        self._may_list(name)
        if at is not None and not at.isdigit():
            number = self.aliases(name).get(at)
            if number is None:
                raise ModelNotFoundError(f"model {name} has no alias {at!r}",
                                         hint=f"set it with `granary model alias {name}@N {at}`")
        else:
            number = int(at) if at else None
        with self.catalog.read() as conn:
            q = sa.select(t.versions).where(t.versions.c.name == name)
            q = q.where(t.versions.c.version == number) if number is not None else \
                q.order_by(t.versions.c.version.desc()).limit(1)
            row = conn.execute(q).first()
        if row is None:
            raise ModelNotFoundError(f"model {ref} does not exist",
                                     hint="list models with `granary model list`; register one with "
                                          "`granary model register CKPT --name NAME`")
        return _row(row)

    def alias_moves(self, name: str) -> list[dict[str, Any]]:
        """A model's aliases with the version each points at and when it last moved, by alias."""
        self._may_list(name)
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.aliases).where(t.aliases.c.name == name)
                                .order_by(t.aliases.c.alias)).all()
        return [{"alias": r.alias, "version": int(r.version), "moved_at": r.moved_at} for r in rows]

    def events(self, name: str, *, after: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit trail of a model: registrations, alias moves, overrides, refusals, deployments (oldest
        first; ``after`` an event id and ``limit`` page through it)."""
        self._may_list(name)
        q = sa.select(t.events).where(t.events.c.name == name).order_by(t.events.c.id)
        if after is not None:
            q = q.where(t.events.c.id > after)
        if limit is not None:
            q = q.limit(limit)
        with self.catalog.read() as conn:
            rows = conn.execute(q).all()
        return [{"id": int(r.id), "version": r.version, "action": r.action, "actor": r.actor,
                 "details": json.loads(r.details), "at": r.at} for r in rows]

    def record(self, name: str, version: int | None, action: str, details: Mapping[str, Any]) -> None:
        """Append to the model's audit trail (and to the security audit log when it is on)."""
        with self.catalog.write() as conn:
            conn.execute(t.events.insert().values(name=name, version=version, action=action,
                                                  actor=actor(self.store), details=json.dumps(dict(details)),
                                                  at=time.time()))
        self.store.hooks.record(f"model.{action}", dataset_of(name),
                                details={"version": version, **dict(details)})

    # -- writing versions -----------------------------------------------------------------------------
    def register(self, checkpoint: str, name: str, *, arch: Mapping[str, Any] | None = None,
                 purpose: str | None = None, description: str = "") -> ModelVersion:
        """Register the model in checkpoint ``checkpoint`` as the next version of ``name``.

        The checkpoint is read through the store's gate (``purpose``), every tensor's shape is checked against
        ``arch`` (default: the run's own), and the weights are exported (safetensors + HF layout) and committed
        as one store version before the catalog row is written: a failure leaves nothing registered.
        """
        from granary.models.artifact import checkpoint_model

        check_name(name)
        model, manifest = checkpoint_model(self.store, checkpoint, arch=arch, purpose=purpose)
        lineage = dict(manifest.lineage)
        data = dict(lineage.get("data") or {})
        versions = [str(v) for v in data.get("versions") or []]
        facts: dict[str, Any] = {"checkpoint": {"dataset": manifest.dataset, "version": manifest.version_id,
                                "step": manifest.metadata.get("step"), "run": manifest.metadata.get("run")},
                 "data": {"refs": data.get("refs") or ([data["ref"]] if data.get("ref") else []),
                          "versions": versions, "weights": data.get("weights"),
                          "purpose": data.get("purpose"), "samples": lineage.get("samples_consumed"),
                          "seq_len": data.get("seq_len")},
                 "recipe": manifest.metadata.get("recipe"), "description": description}
        return self.add_version(name, model, method="registered", parent=None, facts=facts,
                                inputs=[manifest.version_id, *versions])

    def add_version(self, name: str, model: nn.Module, *, method: str, parent: ModelVersion | None,
                    facts: dict[str, Any], inputs: list[str] | None = None) -> ModelVersion:
        """Commit ``model``'s files as a new version of ``name`` (see :mod:`granary.models.codec`)."""
        from granary.models.artifact import write_version_files
        from granary.models.codec import encode

        check_name(name)
        tensors, config, hf = encode(model, method)
        if parent is not None:
            base = {k: v for k, v in parent.facts.items() if k in ("checkpoint", "data", "recipe")}
            facts = {**base, **facts, "parent": parent.ref}
            inputs = [parent.store_version, *(inputs or [])]
        dataset = dataset_of(name)
        self.store.create_dataset(dataset, kind="checkpoint", description=f"files of model {name}", exist_ok=True)
        folder = self.store.settings.home / "staging" / f"register-{uuid.uuid4().hex[:12]}"
        try:
            files = write_version_files(folder, tensors, config, hf=hf)
            facts = {**facts, "size_bytes": (folder / "model.safetensors").stat().st_size,
                     "arch": config["arch"], "hf_layout": hf is not None}
            entries = [self.store.write_blob(dataset, p, name=str(p.relative_to(folder))) for p in files]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        number = self._next_number(name)
        lineage = {"kind": "model", "model": name, "model_version": number, "method": method,
                   "inputs": [i for i in (inputs or []) if isinstance(i, str) and len(i) == 64]}
        with self.store.transaction(dataset, mode="overwrite") as txn:
            txn.add_shards(entries)
            info = txn.commit(message=f"{name} v{number} ({method})", lineage=lineage,
                              metadata={"model": name, "version": number, "method": method}, allow_empty=True)
        mv = ModelVersion(name=name, version=number, store_version=info.id, method=method,
                          parent=parent.version if parent else None, facts=facts, created_at=time.time(),
                          created_by=actor(self.store))
        with self.catalog.write() as conn:
            conn.execute(t.versions.insert().values(
                name=name, version=number, store_version=info.id, parent=mv.parent, method=method,
                facts=json.dumps(facts, default=str), created_at=mv.created_at, created_by=mv.created_by))
        self.record(name, number, "register", {"method": method, "store_version": info.id,
                                               "parent": mv.parent})
        log.info("registered %s (%s) as store version %s", mv.ref, method, info.short_id)
        return mv

    def update_facts(self, mv: ModelVersion) -> None:
        """Store a version's facts again (measurements added after it was committed)."""
        with self.catalog.write() as conn:
            conn.execute(t.versions.update().where(t.versions.c.name == mv.name, t.versions.c.version == mv.version)
                         .values(facts=json.dumps(mv.facts, default=str)))

    def _next_number(self, name: str) -> int:
        with self.catalog.read() as conn:
            top = conn.execute(sa.select(sa.func.max(t.versions.c.version)).where(t.versions.c.name == name)).scalar()
        return int(top or 0) + 1

    # -- reading versions -----------------------------------------------------------------------------
    def load(self, ref: str | ModelVersion, *, purpose: str | None = None) -> nn.Module:
        """The model of a version, ready for inference (read through the store's gate)."""
        from granary.models.codec import decode

        mv = ref if isinstance(ref, ModelVersion) else self.get(ref)
        tensors, config = self.files(mv, purpose=purpose)
        return decode(tensors, config)

    def files(self, mv: ModelVersion, *, purpose: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors, config) of a version's ``model.safetensors`` and ``config.json``."""
        from safetensors.torch import load as load_bytes

        manifest = self.store.open_version(f"{mv.dataset}@{mv.store_version}", purpose=purpose)
        by_name = {str(e.meta["name"]): e for e in manifest.shards}
        tensors = dict(load_bytes(self.store.object_bytes(by_name["model.safetensors"])))
        config = json.loads(self.store.object_bytes(by_name["config.json"]))
        return tensors, config

    # -- aliases ----------------------------------------------------------------------------------------
    def set_alias(self, ref: str, alias: str, *, override: str | None = None,
                  gate: Any = None) -> ModelVersion:
        """Point ``alias`` of the model at the version ``ref``; every move (and refusal) is audited.

        Moving ``production`` to a version whose data allows only ``research`` is refused unless ``override``
        gives a reason (recorded as an audited override). ``gate`` (a :class:`granary.models.evaluate.Gate`)
        refuses the move when the version regresses against the alias's current version.
        """
        if not ALIAS_RE.fullmatch(alias) or alias.isdigit():
            raise ModelError(f"invalid alias {alias!r}", hint="use a lowercase word such as staging or production")
        mv = self.get(ref)
        # moving an alias changes what `name@alias` serves: a write on the model, authorised (refusals audited)
        self.store.hooks.authorize("write", mv.dataset)
        previous = self.aliases(mv.name).get(alias)
        if alias == "production":
            self._check_policy(mv, alias, override)
        if gate is not None and previous is not None and previous != mv.version:
            verdict = gate.check(self, self.get(f"{mv.name}@{previous}"), mv)
            if not verdict.ok:
                self.record(mv.name, mv.version, "alias-refused", {"alias": alias, "reason": verdict.reason})
                raise PromotionRefusedError(f"{mv.ref} may not become {alias}: {verdict.reason}",
                                            hint="fix the regression, or move the alias without the gate")
        with self.catalog.write() as conn:
            conn.execute(t.aliases.delete().where(t.aliases.c.name == mv.name, t.aliases.c.alias == alias))
            conn.execute(t.aliases.insert().values(name=mv.name, alias=alias, version=mv.version,
                                                   moved_at=time.time()))
        self.record(mv.name, mv.version, "alias", {"alias": alias, "from": previous, "to": mv.version,
                                                   **({"override": override} if override else {})})
        return mv

    def _check_policy(self, mv: ModelVersion, alias: str, override: str | None) -> None:
        from granary.models.lineage import data_policy

        policy = data_policy(self.store, mv)
        if policy.purposes is None or policy.purposes - NON_PRODUCTION:
            return
        reason = (f"its training data may only be used for {sorted(policy.purposes)} "
                  f"(datasets {sorted(policy.sources)})")
        if override:
            self.record(mv.name, mv.version, "override", {"alias": alias, "reason": override, "policy": reason})
            log.warning("%s promoted to %s against data policy: %s (override: %s)", mv.ref, alias, reason, override)
            return
        self.record(mv.name, mv.version, "alias-refused", {"alias": alias, "reason": reason})
        raise PromotionRefusedError(f"{mv.ref} may not become {alias}: {reason}",
                                    hint="train on data licensed for production use, or pass --override REASON "
                                         "(an audited exception)")


def _row(r: Any) -> ModelVersion:
    return ModelVersion(name=r.name, version=int(r.version), store_version=r.store_version,
                        parent=r.parent, method=r.method, facts=json.loads(r.facts), created_at=r.created_at,
                        created_by=r.created_by)
