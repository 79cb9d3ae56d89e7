"""Catalog operations on datasets, versions and refs (branches and tags), including the head CAS."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from granary.catalog.tables import datasets, ref_log, refs, versions
from granary.errors import AlreadyExistsError, AmbiguousRefError, ConflictError, NotFoundError
from granary.store.model import DatasetInfo, RefInfo, VersionInfo
from granary.store.names import Ref, looks_like_version_id


def get_dataset(conn: Connection, name: str) -> DatasetInfo:
    row = conn.execute(sa.select(datasets).where(datasets.c.name == name)).first()
    if row is None:
        raise NotFoundError(f"dataset {name!r} does not exist", hint="list datasets with `granary ls`")
    return DatasetInfo.from_row(row)


def list_datasets(conn: Connection) -> list[DatasetInfo]:
    return [DatasetInfo.from_row(r) for r in conn.execute(sa.select(datasets).order_by(datasets.c.name))]


def insert_dataset(conn: Connection, info: DatasetInfo) -> None:
    if conn.execute(sa.select(datasets.c.name).where(datasets.c.name == info.name)).first():
        raise AlreadyExistsError(f"dataset {info.name!r} already exists", hint="pick another name")
    conn.execute(
        datasets.insert().values(
            name=info.name,
            kind=info.kind,
            default_branch=info.default_branch,
            description=info.description,
            metadata=json.dumps(info.metadata, sort_keys=True),
            created_at=info.created_at,
            created_by=info.created_by,
        )
    )
    conn.execute(
        refs.insert().values(
            dataset=info.name, kind="branch", name=info.default_branch, version_id=None, updated_at=info.created_at
        )
    )


def get_version(conn: Connection, version_id: str) -> VersionInfo:
    row = conn.execute(sa.select(versions).where(versions.c.id == version_id)).first()
    if row is None:
        raise NotFoundError(f"version {version_id[:12]} does not exist")
    return VersionInfo.from_row(row)


def get_ref(conn: Connection, dataset: str, kind: str, name: str) -> RefInfo | None:
    row = conn.execute(
        sa.select(refs).where(refs.c.dataset == dataset, refs.c.kind == kind, refs.c.name == name)
    ).first()
    return None if row is None else RefInfo(row.dataset, row.kind, row.name, row.version_id, row.updated_at)


def list_refs(conn: Connection, dataset: str, kind: str | None = None) -> list[RefInfo]:
    q = sa.select(refs).where(refs.c.dataset == dataset)
    if kind:
        q = q.where(refs.c.kind == kind)
    rows = conn.execute(q.order_by(refs.c.kind, refs.c.name))
    return [RefInfo(r.dataset, r.kind, r.name, r.version_id, r.updated_at) for r in rows]


def resolve(conn: Connection, ref: Ref) -> VersionInfo:
    """Resolve a parsed reference: branch, then tag, then version-id prefix."""
    ds = get_dataset(conn, ref.dataset)
    rev = ref.rev or ds.default_branch
    for kind in ("branch", "tag"):
        found = get_ref(conn, ds.name, kind, rev)
        if found is not None:
            if found.version_id is None:
                raise NotFoundError(
                    f"branch {ds.name}@{rev} has no commits yet",
                    hint=f"ingest or commit data first: granary ingest FILE --dataset {ds.name}",
                )
            return get_version(conn, found.version_id)
    if looks_like_version_id(rev):
        rows = conn.execute(
            sa.select(versions)
            .where(versions.c.dataset == ds.name, versions.c.id.like(f"{rev}%"))
            .limit(2)
        ).all()
        if len(rows) > 1:
            raise AmbiguousRefError(f"{ref} matches several versions", hint="give more characters of the version id")
        if rows:
            return VersionInfo.from_row(rows[0])
    raise NotFoundError(
        f"{ref} names no branch, tag or version of {ds.name}",
        hint=f"list versions with `granary log {ds.name}` and refs with `granary branch {ds.name}`",
    )


def insert_version(conn: Connection, info: VersionInfo) -> None:
    """Insert a version row unless an identical version (same id) is already recorded."""
    if conn.execute(sa.select(versions.c.id).where(versions.c.id == info.id)).first():
        return
    conn.execute(
        versions.insert().values(
            id=info.id,
            dataset=info.dataset,
            kind=info.kind,
            manifest_key=info.manifest_key,
            parents=json.dumps(info.parents),
            num_rows=info.num_rows,
            num_bytes=info.num_bytes,
            num_shards=info.num_shards,
            num_tokens=info.num_tokens,
            message=info.message,
            author=info.author,
            created_at=info.created_at,
            state=info.state,
        )
    )


def move_ref(
    conn: Connection,
    dataset: str,
    kind: str,
    name: str,
    *,
    expected: str | None,
    new: str | None,
    action: str,
    actor: str,
    check: bool = True,
) -> None:
    """Compare-and-swap a ref from ``expected`` to ``new``; raise ConflictError if it moved."""
    now = time.time()
    cond = [refs.c.dataset == dataset, refs.c.kind == kind, refs.c.name == name]
    if check:
        cond.append(refs.c.version_id.is_(None) if expected is None else refs.c.version_id == expected)
    result = conn.execute(refs.update().where(*cond).values(version_id=new, updated_at=now))
    if result.rowcount != 1:
        current = get_ref(conn, dataset, kind, name)
        if current is None:
            raise NotFoundError(f"{kind} {dataset}@{name} does not exist")
        raise ConflictError(dataset, name, expected, current.version_id)
    log_ref(conn, dataset, kind, name, expected, new, action, actor, now)


def create_ref(conn: Connection, dataset: str, kind: str, name: str, version_id: str | None, actor: str) -> None:
    if get_ref(conn, dataset, "branch", name) or get_ref(conn, dataset, "tag", name):
        raise AlreadyExistsError(f"{dataset}@{name} already exists", hint="pick another name or delete the old one")
    now = time.time()
    conn.execute(refs.insert().values(dataset=dataset, kind=kind, name=name, version_id=version_id, updated_at=now))
    log_ref(conn, dataset, kind, name, None, version_id, f"create-{kind}", actor, now)


def delete_ref(conn: Connection, dataset: str, kind: str, name: str, actor: str) -> None:
    found = get_ref(conn, dataset, kind, name)
    if found is None:
        raise NotFoundError(f"{kind} {dataset}@{name} does not exist")
    conn.execute(refs.delete().where(refs.c.dataset == dataset, refs.c.kind == kind, refs.c.name == name))
    log_ref(conn, dataset, kind, name, found.version_id, None, f"delete-{kind}", actor, time.time())


def log_ref(
    conn: Connection, dataset: str, kind: str, name: str, old: str | None, new: str | None, action: str,
    actor: str, at: float,
) -> None:
    conn.execute(
        ref_log.insert().values(
            dataset=dataset, kind=kind, name=name, old_version=old, new_version=new, action=action, actor=actor, at=at
        )
    )


def history(conn: Connection, dataset: str, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(ref_log).where(ref_log.c.dataset == dataset).order_by(ref_log.c.seq.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def all_versions(conn: Connection, dataset: str | None = None) -> list[VersionInfo]:
    q = sa.select(versions)
    if dataset:
        q = q.where(versions.c.dataset == dataset)
    return [VersionInfo.from_row(r) for r in conn.execute(q.order_by(versions.c.created_at))]
