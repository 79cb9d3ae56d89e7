"""Backups of a whole store: incremental, restorable, checked by a restore drill; SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import SyncError
from granary.store import open_store
from granary.store.store import Store
from granary.store.sync import Remote
from granary.store.sync.backup import create_backup, list_backups, prune_backups, restore_backup, verify_backup
from granary.store.sync.snapshot import digests_of


def _commit(store: Store, tag: str, rows: int = 300) -> str:
    store.create_dataset("web", exist_ok=True)
    table = pa.table({"id": [f"{tag}-{i}" for i in range(rows)], "text": [f"{tag} text {i} " * 6 for i in range(rows)]})
    return store.commit_table("web", table, message=tag).id


def _url(store: Store) -> str:
    return store.catalog.url.render_as_string(hide_password=False)


def test_backup_is_incremental_and_a_restore_is_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRANARY_SECURE", "1")  # audit records and policies exist and must come back identical
    store = open_store(Settings.from_env(home=tmp_path / "live"))
    for i in range(3):
        _commit(store, f"c{i}")
    store.tag("web", "golden")
    dest = Remote(str(tmp_path / "backups"))
    first = create_backup(store, dest)
    assert first.transfer.objects == first.details["objects_total"] and first.transfer.skipped == 0
    _commit(store, "c3", rows=10)
    second = create_backup(store, dest)
    assert second.transfer.skipped == first.details["objects_total"]  # nothing already backed up is sent again
    assert 0 < second.transfer.objects <= 3
    assert [b["id"] for b in list_backups(dest)] == [first.id, second.id]

    home = tmp_path / "restored"
    url = f"sqlite:///{home / 'catalog.db'}"
    report = restore_backup(dest, None, catalog_url=url, storage_url=str(home / "objects"), home=home)
    assert report.ok, report.problems
    recorded = list_backups(dest)[-1]["catalog"]["tables"]
    assert digests_of(url) == recorded  # every version, ref, policy and audit entry, as of the backup's instant
    live = digests_of(_url(store))
    assert {k: v for k, v in live.items() if k != "secure_audit"} == \
        {k: v for k, v in recorded.items() if k != "secure_audit"}
    assert live["secure_audit"]["rows"] == recorded["secure_audit"]["rows"] + 1  # the backup itself, audited after
    restored = open_store(Settings.from_env(home=home))
    assert restored.read_table("web").equals(store.read_table("web"))
    assert restored.resolve("web@golden").id == store.resolve("web@golden").id
    assert restored.verify().ok
    from granary.secure.audit import AuditLog

    assert AuditLog(restored.catalog).verify().ok
    with pytest.raises(SyncError, match="not empty"):
        restore_backup(dest, None, catalog_url=url, storage_url=str(home / "objects"), home=home)


def test_the_restore_drill_passes_and_catches_a_damaged_object(tmp_path: Path) -> None:
    store = open_store(Settings.from_env(home=tmp_path / "live"))
    _commit(store, "a")
    _commit(store, "b")
    dest = Remote(str(tmp_path / "backups"))
    made = create_backup(store, dest)
    drill = verify_backup(dest)
    assert drill.ok and drill.details["versions_verified"] == 2 and drill.id == made.id
    shard = next(k for k in dest.list_objects("datasets") if "/data/" in k)
    path = Path(dest.object_path(shard))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="failed its check in transit"):
        verify_backup(dest)


def test_a_backup_killed_midway_is_ignored_and_the_next_one_completes(tmp_path: Path) -> None:
    import numpy as np

    home = tmp_path / "live"
    store = open_store(Settings.from_env(home=home))
    store.create_dataset("web")
    rng = np.random.default_rng(0)
    for i in range(4):  # incompressible text: ~1 MB of shards per commit, ~4 MB in all
        texts = [rng.bytes(1000).hex() for _ in range(500)]
        store.commit_table("web", pa.table({"id": [f"c{i}-{j}" for j in range(500)], "text": texts}), message=f"c{i}")
    code = textwrap.dedent("""
        import sys
        from granary.config import Settings
        from granary.store import open_store
        from granary.store.sync import Remote
        from granary.store.sync.backup import create_backup
        create_backup(open_store(Settings.from_env(home=sys.argv[1])), Remote(sys.argv[2]), jobs=1,
                      bwlimit_bytes_s=200_000)  # ~20 s for ~4 MB: the kill below lands after the first object
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(home), str(tmp_path / "backups")], env=env,
                            stderr=subprocess.PIPE)
    dest = Remote(str(tmp_path / "backups"))
    deadline = time.monotonic() + 60
    while not dest.list_objects("datasets") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert list_backups(dest) == []  # no backup.json: the partial backup does not count
    done = create_backup(store, dest)
    assert done.transfer.skipped >= 1  # objects the killed run finished are not sent again
    assert verify_backup(dest).ok


def test_retention_keeps_the_newest_of_each_day_week_and_month(tmp_path: Path) -> None:
    store = open_store(Settings.from_env(home=tmp_path / "live"))
    dest = Remote(str(tmp_path / "backups"))
    day = 86400.0
    base = 1781524800.0  # 2026-06-15 12:00 UTC
    ages = [0, 0.1, 1, 2, 9, 40, 100]  # days ago
    ids = []
    for i, age in enumerate(ages):
        _commit(store, f"c{i}", rows=5)
        made = create_backup(store, dest)
        doc_path = Path(dest.root) / "backups" / made.id / "backup.json"
        doc = json.loads(doc_path.read_text())
        doc["created_at"] = base - age * day  # fixed instants: the test never depends on the time of day it runs
        doc_path.write_text(json.dumps(doc))
        ids.append(made.id)
    result = prune_backups(dest, keep_last=1, keep_daily=2, keep_weekly=0, keep_monthly=0, dry_run=True)
    # newest first by age: 0 (today), 0.1 (today, older), 1 (yesterday) ...: daily keeps today's newest + yesterday
    assert sorted(result["kept"]) == sorted([ids[0], ids[2]])
    result = prune_backups(dest, keep_last=1, keep_daily=1, keep_weekly=0, keep_monthly=3)
    # months, newest first: June (age 0), May (age 40), March (age 100)
    assert set(result["kept"]) == {ids[0], ids[5], ids[6]}
    assert {b["id"] for b in list_backups(dest)} == {ids[0], ids[5], ids[6]}
    assert verify_backup(dest, ids[5]).ok  # what a kept backup needs survived the object sweep


@pytest.mark.postgres
@pytest.mark.slow
def test_a_postgresql_catalog_backs_up_with_pg_dump_and_restores(tmp_path: Path, pg_url: str) -> None:
    from tests.conftest import fresh_pg_database

    url = fresh_pg_database(pg_url)
    store = open_store(Settings.from_env(home=tmp_path / "live", catalog_url=url))
    _commit(store, "pg1")
    _commit(store, "pg2")
    dest = Remote(str(tmp_path / "backups"))
    made = create_backup(store, dest)
    assert list_backups(dest)[0]["catalog"]["kind"] == "postgresql"
    drill = verify_backup(dest, scratch_pg_url=url)
    assert drill.ok and drill.details["versions_verified"] == 2, drill.problems
    target = fresh_pg_database(pg_url)
    home = tmp_path / "restored"
    report = restore_backup(dest, made.id, catalog_url=target, storage_url=str(home / "objects"), home=home)
    assert report.ok, report.problems
    assert digests_of(target) == digests_of(url)
    restored = open_store(Settings.from_env(home=home, catalog_url=target))
    assert restored.read_table("web").equals(store.read_table("web"))
    store.catalog.dispose()
    restored.catalog.dispose()
