"""Crash safety (SIGKILL at random points) and concurrent writers, with real processes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from granary.config import Settings
from granary.store import open_store

WRITER = Path(__file__).with_name("writer.py")


def _spawn(home: Path, url: str, dataset: str, tag: str, commits: int, rows: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WRITER), str(home), url, dataset, tag, str(commits), str(rows)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(store, dataset: str) -> int:  # type: ignore[no-untyped-def]
    """Every recorded version verifies and the head's chain reaches the root; returns the chain length."""
    report = store.verify()
    assert report.ok, [p.message for p in report.problems]
    if not store.versions(dataset):
        return 0
    chain = store.log(dataset, limit=10_000)
    recorded = {v.id for v in store.versions(dataset)}
    assert {v.id for v in chain} == recorded  # no version outside the chain (no partial/orphan commit)
    assert chain[-1].parents == []
    table = store.read_table(dataset)
    assert table.num_rows == chain[0].num_rows
    assert len(set(table.column("id").to_pylist())) == table.num_rows  # no commit applied twice
    return len(chain)


def test_sigkill_at_random_points_leaves_no_partial_version(tmp_path: Path) -> None:
    home = tmp_path / "g"
    settings = Settings.from_env(home=home, shard_size_bytes=8192, row_group_bytes=4096)
    store = open_store(settings)
    store.create_dataset("crash")
    rng = random.Random(1234)
    attempted = kills = 0
    while attempted < 50:
        proc = _spawn(home, settings.catalog_url, "crash", f"w{kills}", 30, 60)
        assert proc.stdout is not None
        stop_after = rng.randint(1, 10)
        landed = []
        for line in proc.stdout:  # let it commit a few times, then kill it at a random point of the next commit
            landed.append(json.loads(line))
            if len(landed) >= stop_after:
                break
        time.sleep(rng.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        attempted += len(landed) + 1  # the commit in flight when killed counts as attempted
        kills += 1
        store._manifests.clear()
        chain = _check_consistent(store, "crash")
        assert chain >= sum(1 for x in landed if x["outcome"] == "landed")
    assert kills >= 5
    gc = store.gc(grace_s=0)
    assert _check_consistent(store, "crash") >= 1
    assert not any(store.objects.staging_root.iterdir()) or gc.staging_removed


def _concurrent(home: Path, url: str) -> None:
    store = open_store(Settings.from_env(home=home, catalog_url=url))
    store.create_dataset("race")
    procs = [_spawn(home, url, "race", f"p{i}", 25, 5) for i in range(4)]
    outcomes = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        outcomes += [(f"p{i}", json.loads(line)) for line in out.splitlines()]
    assert len(outcomes) == 100
    landed = {(tag, o["commit"]) for tag, o in outcomes if o["outcome"] == "landed"}
    conflicts = [o for _, o in outcomes if o["outcome"] == "conflict"]
    assert len(landed) + len(conflicts) == 100 and landed
    chain = _check_consistent(store, "race")
    assert chain == len(landed)
    ids = set(store.read_table("race").column("id").to_pylist())
    expected = {f"{tag}-c{c}-r{j}" for tag, c in landed for j in range(5)}
    assert ids == expected  # every landed commit is there, nothing from a failed one
    store.catalog.dispose()


def test_four_concurrent_writers_sqlite(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "g")
    _concurrent(tmp_path / "g", settings.catalog_url)


@pytest.mark.postgres
def test_four_concurrent_writers_postgres(tmp_path: Path, pg_url: str) -> None:
    from tests.conftest import fresh_pg_database

    _concurrent(tmp_path / "g", fresh_pg_database(pg_url))
