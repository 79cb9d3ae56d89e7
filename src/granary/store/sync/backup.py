"""Backups of a whole store (catalog and objects), incremental, with retention, restore and a restore drill.

Layout under a backup destination (a folder or ``s3://``)::

    objects/<key>                        every object any backup needs, content addressed, shared by all backups
    backups/<id>/catalog.sqlite.zst      the catalog at one instant (or catalog.pgdump for PostgreSQL)
    backups/<id>/objects.json.zst        [key, size] of every object that catalog references
    backups/<id>/backup.json             written last: a backup without it is incomplete and ignored
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from granary.errors import NotFoundError, SyncError
from granary.store.manifest import decode_segment, parse_envelope
from granary.store.sync.remote import Remote
from granary.store.sync.snapshot import digests_of, restore_catalog, scratch_pg_database, snapshot
from granary.store.sync.transfer import RateLimiter, TransferStats, copy_many, publishing_writer

log = logging.getLogger(__name__)
FORMAT = "granary.backup/1"


@dataclass
class BackupReport:
    """What a backup, restore or verification did."""

    id: str
    action: str
    ok: bool = True
    transfer: TransferStats = field(default_factory=TransferStats)
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "ok": self.ok, "problems": self.problems,
                **self.details, **self.transfer.to_dict()}


def create_backup(store: Any, dest: Remote, *, jobs: int = 8, bwlimit_bytes_s: float | None = None,
                  on_plan: Callable[[int, int], None] | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> BackupReport:
    """Back up the catalog and every object it references; objects already in ``dest`` are not sent again."""
    store.hooks.authorize("backup", "*")
    backup_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)
    report = BackupReport(id=backup_id, action="create")
    with tempfile.TemporaryDirectory(prefix="granary-backup-") as tmp:
        snap = snapshot(store.catalog.engine, Path(tmp))
        needed = _referenced(store, snap.versions)
        present = dest.list_objects("datasets")
        todo = {k: s for k, s in needed.items() if k not in present}
        if on_plan is not None:
            on_plan(len(todo), sum(todo.values()))
        report.transfer = copy_many(todo.items(), store.objects.open, dest.writer, jobs=jobs,
                                    limiter=RateLimiter(bwlimit_bytes_s), on_bytes=on_bytes,
                                    dest=f"backup destination {dest.url}")
        report.transfer.skipped = len(needed) - len(todo)
        dest.flush()  # the objects are durable before the backup that needs them is recorded
        catalog_name = "catalog.sqlite.zst" if snap.kind == "sqlite" else "catalog.pgdump"
        catalog_bytes = _compress_file(snap.path) if snap.kind == "sqlite" else snap.path.read_bytes()
        listing = zstandard.compress(json.dumps(sorted(needed.items())).encode(), 10)
        base = f"{dest.root}/backups/{backup_id}"
        dest.put_file(f"{base}/{catalog_name}", catalog_bytes)
        dest.put_file(f"{base}/objects.json.zst", listing)
        doc = {
            "format": FORMAT, "id": backup_id, "created_at": time.time(), "created_by": store.settings.author,
            "catalog": {"kind": snap.kind, "file": catalog_name, "bytes": len(catalog_bytes),
                        "sha256": hashlib.sha256(catalog_bytes).hexdigest(), "tables": snap.tables},
            "objects": {"count": len(needed), "bytes": sum(needed.values()),
                        "sha256": hashlib.sha256(listing).hexdigest()},
            "versions": len(snap.versions),
            "source": {"catalog": store.catalog.url.render_as_string(hide_password=True),
                       "storage": store.settings.storage_url},
        }
        dest.put_file(f"{base}/backup.json", json.dumps(doc, indent=1, sort_keys=True).encode())
    report.details = {"versions": doc["versions"], "catalog_bytes": doc["catalog"]["bytes"],
                      "objects_total": len(needed), "dest": dest.url}
    store.hooks.record("backup", "*", details={"id": backup_id, "dest": dest.url, "objects": report.transfer.objects,
                                               "bytes": report.transfer.bytes})
    return report


def list_backups(dest: Remote) -> list[dict[str, Any]]:
    """Every complete backup at ``dest``, oldest first (incomplete ones, without backup.json, are left out)."""
    base = f"{dest.root}/backups"
    try:
        folders = dest.fs.ls(base, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for folder in folders:
        try:
            out.append(json.loads(dest.fs.cat_file(f"{folder}/backup.json")))
        except FileNotFoundError:
            continue
    return sorted(out, key=lambda d: d["created_at"])


def get_backup(dest: Remote, backup_id: str | None) -> dict[str, Any]:
    """A backup's record (the newest when ``backup_id`` is None)."""
    found = list_backups(dest)
    if not found:
        raise NotFoundError(f"no complete backup at {dest.url}", hint="create one with `granary backup create DEST`")
    if backup_id is None:
        return found[-1]
    for doc in found:
        if doc["id"] == backup_id or doc["id"].startswith(backup_id):
            return doc
    raise NotFoundError(f"no backup {backup_id!r} at {dest.url}",
                        hint=f"backups there: {', '.join(d['id'] for d in found[-5:])}")


def restore_backup(dest: Remote, backup_id: str | None, *, catalog_url: str, storage_url: str, home: Path,
                   force: bool = False, jobs: int = 8, on_plan: Callable[[int, int], None] | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> BackupReport:
    """Restore a backup into an empty store (catalog and objects), then check the catalog is identical."""
    from granary.store.objects import ObjectStore

    doc = get_backup(dest, backup_id)
    report = BackupReport(id=doc["id"], action="restore")
    _refuse_non_empty(catalog_url, force)
    cat = doc["catalog"]
    raw = dest.fs.cat_file(f"{dest.root}/backups/{doc['id']}/{cat['file']}")
    if hashlib.sha256(raw).hexdigest() != cat["sha256"]:
        raise SyncError(f"backup {doc['id']}: the catalog file does not match its recorded checksum",
                        hint="restore an older backup (`granary backup list DEST`)")
    listing = dest.fs.cat_file(f"{dest.root}/backups/{doc['id']}/objects.json.zst")
    if hashlib.sha256(listing).hexdigest() != doc["objects"]["sha256"]:
        raise SyncError(f"backup {doc['id']}: the object list does not match its recorded checksum")
    needed = dict(json.loads(zstandard.decompress(listing)))
    objects = ObjectStore(storage_url, local_staging=home / "staging")
    there = {o.key for o in objects.list("datasets")}
    todo = {k: s for k, s in needed.items() if k not in there}
    if on_plan is not None:
        on_plan(len(todo), sum(todo.values()))
    with publishing_writer(objects, "restore") as writer:
        report.transfer = copy_many(todo.items(), dest.open_object, writer, jobs=jobs, limiter=RateLimiter(None),
                                    on_bytes=on_bytes, dest=f"the restored store ({storage_url})")
    with tempfile.TemporaryDirectory(prefix="granary-restore-") as tmp:
        dump = Path(tmp) / "catalog"
        dump.write_bytes(zstandard.decompress(raw) if cat["kind"] == "sqlite" else raw)
        restore_catalog(cat["kind"], dump, catalog_url=catalog_url)
    got = digests_of(catalog_url)
    for name, want in cat["tables"].items():
        if got.get(name) != want:
            report.ok = False
            report.problems.append(f"table {name}: restored {got.get(name)}, backed up {want}")
    report.details = {"versions": doc["versions"], "objects_total": len(needed), "catalog": cat["kind"]}
    return report


def verify_backup(dest: Remote, backup_id: str | None = None, *, scratch_pg_url: str | None = None,
                  jobs: int = 8) -> BackupReport:
    """The restore drill: restore into a scratch store, compare every catalog table, verify every version's data."""
    from granary.config import Settings
    from granary.store.store import Store

    doc = get_backup(dest, backup_id)
    with tempfile.TemporaryDirectory(prefix="granary-drill-") as tmp:
        home = Path(tmp)
        if doc["catalog"]["kind"] == "sqlite":
            report = _drill(dest, doc, home, f"sqlite:///{home / 'catalog.db'}", jobs, Settings, Store)
        else:
            server = scratch_pg_url or _source_server(doc)
            with scratch_pg_database(server, f"granary_drill_{secrets.token_hex(4)}") as url:
                report = _drill(dest, doc, home, url, jobs, Settings, Store)
    report.action = "verify"
    return report


def _drill(dest: Remote, doc: dict[str, Any], home: Path, catalog_url: str, jobs: int, settings_cls: Any,
           store_cls: Any) -> BackupReport:
    report = restore_backup(dest, doc["id"], catalog_url=catalog_url, storage_url=str(home / "objects"), home=home,
                            jobs=jobs)
    store = store_cls(settings_cls.from_env(home=home, catalog_url=catalog_url, storage_url=str(home / "objects")))
    try:
        checked = store.verify(None, deep=True)
        report.details["versions_verified"] = checked.versions
        report.details["shards_verified"] = checked.shards
        for p in checked.problems:
            report.ok = False
            report.problems.append(f"{p.kind} {p.key} (version {p.version[:12]}): {p.message}")
    finally:
        store.catalog.engine.dispose()
    return report


def prune_backups(dest: Remote, *, keep_last: int = 1, keep_daily: int = 7, keep_weekly: int = 4,
                  keep_monthly: int = 12, dry_run: bool = False) -> dict[str, Any]:
    """Keep the newest backup of each of the last N days, weeks and months (and the last ``keep_last``); delete the
    rest, then every object no kept backup lists."""
    found = list_backups(dest)
    keep: set[str] = {d["id"] for d in found[-keep_last:]} if keep_last > 0 else set()
    for fmt, count in (("%Y-%m-%d", keep_daily), ("%G-W%V", keep_weekly), ("%Y-%m", keep_monthly)):
        periods: dict[str, str] = {}
        for d in reversed(found):  # newest first: the first seen of a period is its newest
            period = dt.datetime.fromtimestamp(d["created_at"], dt.UTC).strftime(fmt)
            if period not in periods and len(periods) < count:
                periods[period] = d["id"]
        keep |= set(periods.values())
    drop = [d["id"] for d in found if d["id"] not in keep]
    needed: set[str] = set()
    for d in found:
        if d["id"] in keep:
            listing = dest.fs.cat_file(f"{dest.root}/backups/{d['id']}/objects.json.zst")
            needed.update(k for k, _ in json.loads(zstandard.decompress(listing)))
    stray = [k for k in dest.list_objects("datasets") if k not in needed]
    if not dry_run:
        for bid in drop:
            dest.fs.rm(f"{dest.root}/backups/{bid}", recursive=True)
        for key in stray:
            dest.fs.rm_file(dest.object_path(key))
    return {"kept": sorted(keep), "deleted": drop, "objects_deleted": len(stray), "dry_run": dry_run}


# -- helpers ------------------------------------------------------------------------------------------------
def _referenced(store: Any, versions: list[tuple[str, str, str]]) -> dict[str, int]:
    """Every object the snapshot's live or expired versions need, with sizes (manifests and segments read once)."""
    out: dict[str, int] = {}
    for _vid, manifest_key, state in versions:
        if state not in ("live", "expired"):
            continue
        data = store.objects.get_bytes(manifest_key)
        out[manifest_key] = len(data)
        _, body, _ = parse_envelope(data, key=manifest_key)
        for seg in list(body["segments"]) + [s for segs in (body.get("tables") or {}).values() for s in segs]:
            seg_bytes = store.objects.get_bytes(seg["key"])
            out[seg["key"]] = len(seg_bytes)
            for e in decode_segment(seg_bytes, key=seg["key"], expected_sha256=seg["sha256"]):
                out[e.key] = e.bytes
    return out


def _compress_file(path: Path) -> bytes:
    cctx = zstandard.ZstdCompressor(level=10, threads=-1)
    with open(path, "rb") as f:
        return cctx.compress(f.read())


def _refuse_non_empty(catalog_url: str, force: bool) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(catalog_url)
    try:
        if engine.dialect.name == "sqlite" and engine.url.database and not Path(engine.url.database).exists():
            return
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    if names and not force:
        raise SyncError(f"the target catalog {sa.make_url(catalog_url).render_as_string(hide_password=True)} is not "
                        f"empty ({len(names)} tables)", hint="restore into a new home or an empty database")


def _source_server(doc: dict[str, Any]) -> str:
    url = doc["source"]["catalog"]
    if "***" in url:
        raise SyncError("the backup's PostgreSQL server needs a password for the drill",
                        hint="give a server URL with `--scratch-url postgresql+psycopg://USER:PASS@HOST/postgres`")
    return url
