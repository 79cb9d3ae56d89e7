"""The list and detail queries of the hot API routes: SQLAlchemy Core statements compiled once per dialect and run
on a pooled DBAPI connection, rows mapped straight to dicts.

A page costs one statement whatever its size, as in :mod:`granary.api.queries`, and skips SQLAlchemy's per-call
work (statement cache lookup, execution context, result proxy, row objects): the statements are fixed SQL with
named parameters. Reads need no transaction (one SELECT sees one snapshot): PostgreSQL connections are switched
to autocommit for the checkout (no BEGIN/ROLLBACK round trips) and back before they return to the pool; SQLite
connections already run in autocommit between the catalog's explicit BEGINs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB

from granary.catalog import Catalog
from granary.catalog import tables as ct
from granary.sched import tables as st
from granary.secure import tables as sec

P = sa.bindparam
AUDIT_FILTERS = ("principal", "dataset", "action", "outcome")


class Statement(NamedTuple):
    """Compiled SQL and the values of its constant parameters."""

    text: str
    defaults: dict[str, Any]


class RawReader:
    """Runs named read statements on a catalog's pooled DBAPI connections.

    Args:
        catalog: the catalog; its engine's pool lends the connections.

    Attributes:
        executed: statements executed so far (tests count them next to SQLAlchemy's own).
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.dialect = catalog.engine.dialect
        # sqlite3 takes :name parameters; SQLAlchemy's SQLite dialect would write positional ones
        self._compile_dialect = sqlite.dialect(paramstyle="named") if catalog.is_sqlite else self.dialect
        self._sql: dict[tuple[Any, ...], Statement] = {}
        self._lock = threading.Lock()
        self.executed = 0

    def sql(self, key: tuple[Any, ...], build: Callable[[], sa.Select[Any]]) -> Statement:
        """The statement ``build`` makes, compiled once per ``key``."""
        stmt = self._sql.get(key)
        if stmt is None:
            compiled = build().compile(dialect=self._compile_dialect)
            stmt = Statement(str(compiled), dict(compiled.params))  # constants of the statement are parameters too
            with self._lock:
                self._sql[key] = stmt
        return stmt

    @contextmanager
    def connection(self) -> Iterator[RawConnection]:
        """A pooled DBAPI connection for reads (autocommit while lent)."""
        fairy = self.catalog.engine.raw_connection()
        dbapi = fairy.driver_connection
        pg = not self.catalog.is_sqlite
        try:
            if pg:
                dbapi.autocommit = True  # type: ignore[union-attr]
            yield RawConnection(self, fairy)
        finally:
            try:
                if pg:
                    dbapi.autocommit = False  # type: ignore[union-attr]  # as SQLAlchemy expects it back
            finally:
                fairy.close()


class RawConnection:
    """One lent connection: :meth:`rows` runs a compiled statement."""

    def __init__(self, reader: RawReader, fairy: Any) -> None:
        self.reader = reader
        self.fairy = fairy

    def rows(self, stmt: Statement, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The statement's rows as dicts keyed by column label."""
        cur = self.fairy.cursor()
        try:
            cur.execute(stmt.text, {**stmt.defaults, **params})
            self.reader.executed += 1
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()


# -- statements ---------------------------------------------------------------------------------------------
def _version_columns() -> list[sa.ColumnElement[Any]]:
    v = ct.versions.c
    return [v.id, v.dataset, v.kind, v.parents, v.num_rows, v.num_bytes, v.num_shards, v.num_tokens, v.message,
            v.author, v.created_at, v.state]


def datasets_page(conn: RawConnection, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Datasets by name after ``after``, each with the version at its default branch head."""
    def build() -> sa.Select[Any]:
        d, r = ct.datasets.c, ct.refs.c
        head = sa.select(r.version_id).where(r.dataset == d.name, r.kind == "branch", r.name == d.default_branch)
        q = sa.select(d.name, d.kind, d.default_branch, d.description, d.metadata, d.created_at, d.created_by,
                      head.scalar_subquery().label("head")).order_by(d.name).limit(P("limit"))
        return q.where(d.name > P("after")) if after is not None else q

    rows = conn.rows(conn.reader.sql(("datasets", after is not None), build), {"after": after, "limit": limit})
    for row in rows:
        row["metadata"] = json.loads(row["metadata"])
    return rows


def versions_page(conn: RawConnection, *, dataset: str | None, after: tuple[float, str] | None,
                  limit: int) -> list[dict[str, Any]]:
    """Versions newest first (of one dataset, or of all), after the sort key ``(created_at, id)``."""
    def build() -> sa.Select[Any]:
        v = ct.versions.c
        q = sa.select(*_version_columns()).order_by(v.created_at.desc(), v.id.desc()).limit(P("limit"))
        if dataset is not None:
            q = q.where(v.dataset == P("dataset"))
        if after is not None:
            q = q.where(sa.or_(v.created_at < P("after_t"), sa.and_(v.created_at == P("after_t"),
                                                                     v.id < P("after_id"))))
        return q

    params = {"dataset": dataset, "limit": limit, "after_t": after[0] if after else None,
              "after_id": after[1] if after else None}
    rows = conn.rows(conn.reader.sql(("versions", dataset is not None, after is not None), build), params)
    for row in rows:
        row["parents"] = json.loads(row["parents"])
    return rows


def jobs_page(conn: RawConnection, *, tenant: str | None, states: Sequence[str] | None,
              after: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
    """Jobs newest first, after the sort key ``(submit_time, id)``, with their GPUs and priority."""
    states = sorted(set(states or ()))

    def build() -> sa.Select[Any]:
        j = st.jobs.c
        q = sa.select(j.id, j.name, j.tenant, j.state, j.reason, j.attempt, j.submit_time, j.first_start,
                      j.finish_time, spec_gpus(conn.reader.dialect.name).label("gpus"),
                      spec_int(conn.reader.dialect.name, "priority").label("priority")
                      ).order_by(j.submit_time.desc(), j.id.desc()).limit(P("limit"))
        if tenant is not None:
            q = q.where(j.tenant == P("tenant"))
        if states:
            q = q.where(j.state.in_([P(f"state{i}") for i in range(len(states))]))
        if after is not None:
            q = q.where(sa.or_(j.submit_time < P("after_t"), sa.and_(j.submit_time == P("after_t"),
                                                                      j.id < P("after_id"))))
        return q

    params: dict[str, Any] = {"tenant": tenant, "limit": limit, "after_t": after[0] if after else None,
                              "after_id": after[1] if after else None}
    params.update({f"state{i}": s for i, s in enumerate(states)})
    key = ("jobs", tenant is not None, len(states), after is not None)
    return conn.rows(conn.reader.sql(key, build), params)


def spec_int(dialect: str, name: str) -> sa.ColumnElement[Any]:
    """SQL for an integer field of a job's JSON spec (NULL when absent), read inside the database."""
    spec = st.jobs.c.spec
    if dialect == "postgresql":
        return sa.cast(sa.cast(spec, JSONB)[name].astext, sa.BigInteger)
    return sa.cast(sa.func.json_extract(spec, f"$.{name}"), sa.Integer)


def spec_gpus(dialect: str) -> sa.ColumnElement[Any]:
    """SQL for a job's GPUs (gpus_per_replica x replicas, as :func:`job_gpus`) read from its JSON spec."""
    return (sa.func.coalesce(spec_int(dialect, "gpus_per_replica"), 0)
            * sa.func.coalesce(spec_int(dialect, "replicas"), 1))


def job_gpus(spec: dict[str, Any]) -> int:
    """GPUs a job asks for (gpus_per_replica x replicas)."""
    return int(spec.get("gpus_per_replica", 0)) * int(spec.get("replicas", 1))


def job_detail(conn: RawConnection, job_id: str) -> dict[str, Any] | None:
    """A job row with its event history and attempts (three statements), or None when there is no such job."""
    j, e, a = st.jobs.c, st.events.c, st.attempts.c
    reader = conn.reader
    found = conn.rows(reader.sql(("job",), lambda: sa.select(
        j.id, j.name, j.tenant, j.state, j.reason, j.attempt, j.submit_time, j.first_start, j.finish_time, j.spec,
        j.node_restarts, j.job_restarts, j.preemptions, j.cancel_requested).where(j.id == P("id"))), {"id": job_id})
    if not found:
        return None
    job = found[0]
    job["spec"] = json.loads(job["spec"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    job["gpus"] = job_gpus(job["spec"])
    job["priority"] = job["spec"].get("priority")
    job["events"] = conn.rows(reader.sql(("job-events",), lambda: sa.select(
        e.seq, e.from_state, e.to_state, e.reason, e.at).where(e.job_id == P("id")).order_by(e.seq)),
        {"id": job_id})
    job["attempts"] = conn.rows(reader.sql(("job-attempts",), lambda: sa.select(
        a.attempt, a.replica, a.node, a.executor, a.state, a.exit_code, a.started_at, a.ended_at)
        .where(a.job_id == P("id")).order_by(a.attempt, a.replica)), {"id": job_id})
    return job


def audit_page(conn: RawConnection, *, filters: dict[str, str | None], before: int | None,
               limit: int) -> list[dict[str, Any]]:
    """Audit records newest first, before sequence number ``before``, matching every given filter."""
    given = tuple(name for name in AUDIT_FILTERS if filters.get(name) is not None)

    def build() -> sa.Select[Any]:
        a = sec.audit.c
        q = sa.select(a.seq, a.at, a.principal, a.action, a.dataset, a.object, a.outcome, a.origin, a.details,
                      a.hash).order_by(a.seq.desc()).limit(P("limit"))
        for name in given:
            q = q.where(getattr(a, name) == P(name))
        return q.where(a.seq < P("before")) if before is not None else q

    params: dict[str, Any] = {"limit": limit, "before": before, **{n: filters[n] for n in given}}
    rows = conn.rows(conn.reader.sql(("audit", given, before is not None), build), params)
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


def dataset_refs(conn: RawConnection, dataset: str) -> list[dict[str, Any]]:
    """A dataset's branches and tags, by kind and name."""
    r = ct.refs.c
    return conn.rows(conn.reader.sql(("refs",), lambda: sa.select(r.dataset, r.kind, r.name, r.version_id,
                                                                   r.updated_at)
                                     .where(r.dataset == P("dataset")).order_by(r.kind, r.name)),
                     {"dataset": dataset})


def count_versions(conn: RawConnection, dataset: str) -> int:
    """How many versions a dataset has."""
    v = ct.versions.c
    rows = conn.rows(conn.reader.sql(("count-versions",), lambda: sa.select(sa.func.count().label("n"))
                                     .select_from(ct.versions).where(v.dataset == P("dataset"))),
                     {"dataset": dataset})
    return int(rows[0]["n"])
