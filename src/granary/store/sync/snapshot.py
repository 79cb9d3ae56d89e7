"""Consistent snapshots of the catalog (SQLite online backup, pg_dump on an exported snapshot) and table digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from granary.errors import SyncError


@dataclass(frozen=True)
class CatalogSnapshot:
    """A catalog frozen at one instant: the dump file, its digests per table, and the versions it records."""

    kind: str  # "sqlite" or "postgresql"
    path: Path
    tables: dict[str, dict[str, Any]]  # table -> {"rows": n, "sha256": digest of its sorted rows}
    versions: list[tuple[str, str, str]]  # (id, manifest_key, state)


def table_digests(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per table: row count and the sha256 of its rows in a stable order (what "identical" means for a restore)."""
    meta = sa.MetaData()
    meta.reflect(bind=conn)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(meta.tables):
        table = meta.tables[name]
        cols = sorted(table.columns, key=lambda c: c.name)
        h = hashlib.sha256()
        n = 0
        for row in conn.execute(sa.select(*cols).order_by(*cols)):
            h.update(json.dumps([_plain(v) for v in row], default=str, separators=(",", ":")).encode())
            h.update(b"\n")
            n += 1
        out[name] = {"rows": n, "sha256": h.hexdigest()}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # SQLite and PostgreSQL disagree on 1 vs 1.0 for REAL columns holding whole numbers
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def _versions(conn: Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(sa.text("SELECT id, manifest_key, state FROM versions ORDER BY id"))
    return [(r[0], r[1], r[2]) for r in rows]


def snapshot(engine: Engine, workdir: Path) -> CatalogSnapshot:
    """Freeze the catalog into ``workdir`` without stopping writers."""
    workdir.mkdir(parents=True, exist_ok=True)
    if engine.dialect.name == "sqlite":
        src = engine.url.database
        if not src or src == ":memory:":
            raise SyncError("an in-memory catalog cannot be backed up", hint="use a catalog file or PostgreSQL")
        dest = workdir / "catalog.sqlite"
        with contextlib.closing(sqlite3.connect(src)) as live, contextlib.closing(sqlite3.connect(dest)) as out:
            live.backup(out)  # SQLite's online backup API: a consistent copy while others keep writing
        snap_engine = sa.create_engine(f"sqlite:///{dest}")
        try:
            with snap_engine.connect() as conn:
                return CatalogSnapshot("sqlite", dest, table_digests(conn), _versions(conn))
        finally:
            snap_engine.dispose()
    if engine.dialect.name == "postgresql":
        return _pg_snapshot(engine, workdir)
    raise SyncError(f"backups of a {engine.dialect.name} catalog are not supported",
                    hint="use SQLite or PostgreSQL for the catalog")


def _pg_snapshot(engine: Engine, workdir: Path) -> CatalogSnapshot:
    """pg_dump and the digests read the very same MVCC snapshot (exported from one repeatable-read transaction)."""
    pg_dump = _tool("pg_dump")
    dest = workdir / "catalog.pgdump"
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        snap = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
        digests = table_digests(conn)
        versions = _versions(conn)
        cmd = [pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snap}", "--file",
               str(dest), _libpq_url(engine)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SyncError(f"pg_dump failed ({done.returncode}): {done.stderr.strip()[:500]}",
                            hint="check that pg_dump matches the server's major version and can connect")
    return CatalogSnapshot("postgresql", dest, digests, versions)


def restore_catalog(kind: str, dump: Path, *, catalog_url: str) -> None:
    """Load a dump into an empty catalog at ``catalog_url`` (a SQLite file or a PostgreSQL database)."""
    engine = sa.create_engine(catalog_url)
    try:
        if kind == "sqlite":
            if engine.dialect.name != "sqlite" or not engine.url.database:
                raise SyncError(f"a SQLite catalog backup restores into a SQLite file, not {engine.dialect.name}")
            target = Path(engine.url.database)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".restoring")
            shutil.copyfile(dump, tmp)
            tmp.replace(target)
            return
        if engine.dialect.name != "postgresql":
            raise SyncError("a PostgreSQL catalog backup restores into a PostgreSQL database")
        cmd = [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
               "--dbname", _libpq_url(engine), str(dump)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SyncError(f"pg_restore failed ({done.returncode}): {done.stderr.strip()[:500]}",
                            hint="restore into an empty database (create it with `createdb NAME`)")
    finally:
        engine.dispose()


def digests_of(catalog_url: str) -> dict[str, dict[str, Any]]:
    """Table digests of the catalog at ``catalog_url``."""
    engine = sa.create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            return table_digests(conn)
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_pg_database(server_url: str, name: str) -> Iterator[str]:
    """Create an empty PostgreSQL database next to ``server_url``'s, yield its URL, drop it afterwards."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    url = engine.url.set(database=name).render_as_string(hide_password=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SyncError(f"{name} is not installed",
                        hint="install the PostgreSQL client: apt-get install postgresql-client")
    return found
