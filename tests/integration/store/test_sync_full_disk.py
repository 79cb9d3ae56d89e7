"""A full disk on the receiving side of a push and of a backup: a clear error, nothing half-visible, and the
next run, once there is room, completes without sending again what had arrived.

The disk is a real tmpfs of a few hundred KB mounted for the test (it needs root, as CI runs; elsewhere the
tests skip and say so).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import SyncError
from granary.store import open_store
from granary.store.store import Store
from granary.store.sync import Remote, push
from granary.store.sync.backup import create_backup, list_backups


def _mount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 384 KB filesystem at ``tmp_path/disk`` (grown by remounting with a larger size)."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        _mount(path, "384k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _grow(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(path)], check=True, capture_output=True)


def _store(tmp_path: Path) -> Store:
    store = open_store(Settings.from_env(home=tmp_path / "site", shard_size_bytes=48 * 1024,
                                         row_group_bytes=16 * 1024))
    store.create_dataset("web")
    rows = 3000
    texts = [os.urandom(256).hex() for _ in range(rows)]  # ~1.5 MB stored: does not fit in 384 KB
    store.commit_table("web", pa.table({"id": [f"d{i}" for i in range(rows)], "text": texts}), message="crawl")
    return store


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_a_push_to_a_full_remote_fails_clearly_and_resumes_once_there_is_room(
        tmp_path: Path, small_disk: Path) -> None:
    store = _store(tmp_path)
    remote = Remote(str(small_disk / "remote"))
    with pytest.raises(SyncError, match=r"no space left on remote .* no ref moved") as full:
        push(store, "web", remote)
    assert "run the same command again" in (full.value.hint or "")
    assert remote.branches("web") == {} and remote.read_ref("web", "main").version_id is None
    assert _leftovers(small_disk) == []
    arrived = remote.list_objects("datasets/web")
    assert arrived, "some objects should have fit before the disk filled"
    _grow(small_disk)
    done = push(store, "web", remote)
    assert done.new_head == store.resolve("web").id
    assert done.transfer.skipped == len(arrived) and set(arrived).isdisjoint(done.transfer.keys)
    assert remote.branches("web") == {"main": done.new_head}


def test_a_backup_to_a_full_folder_fails_clearly_and_records_no_backup(tmp_path: Path, small_disk: Path) -> None:
    store = _store(tmp_path)
    dest = Remote(str(small_disk / "backups"))
    with pytest.raises(SyncError, match=r"no space left"):
        create_backup(store, dest)
    assert list_backups(dest) == [] and _leftovers(small_disk) == []
    _grow(small_disk)
    report = create_backup(store, dest)
    assert [b["id"] for b in list_backups(dest)] == [report.id] and report.transfer.skipped > 0
