from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.errors import IntegrityError
from granary.store import Store


def _docs(n: int, start: int = 0) -> pa.Table:
    ids = range(start, start + n)
    return pa.table({"id": [f"d{i}" for i in ids], "text": [f"text {i} " * 30 for i in ids]})


def _path(store: Store, key: str) -> Path:
    p = store.objects.local_path(key)
    assert p is not None
    return Path(p)


def test_verify_finds_every_bad_or_missing_shard(store: Store) -> None:
    store.create_dataset("web")
    v = store.commit_table("web", _docs(800))
    shards = store.manifest(v).shards
    assert len(shards) >= 3 and store.verify("web").ok
    _path(store, shards[0].key).unlink()  # missing
    p1 = _path(store, shards[1].key)
    data = bytearray(p1.read_bytes())
    data[len(data) // 2] ^= 1
    p1.write_bytes(bytes(data))  # flipped bit
    p2 = _path(store, shards[2].key)
    p2.write_bytes(p2.read_bytes()[:-7])  # truncated
    report = store.verify("web")
    kinds = {p.shard: p.kind for p in report.problems}
    assert kinds == {0: "missing-shard", 1: "bad-shard", 2: "bad-shard"}
    assert any("failed its checksum" in p.message for p in report.problems)
    assert any("expected" in p.message and "bytes" in p.message for p in report.problems)
    with pytest.raises(IntegrityError):
        store.read_table("web")


def test_verify_finds_damaged_manifest_and_segments(store: Store) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(10))
    v2 = store.commit_table("web", _docs(10, 10))
    _path(store, v1.manifest_key).write_text('{"format": "granary.manifest/1", "id": "x"}')
    seg = store.manifest(v2).body["segments"][0]["key"]
    store._manifests.clear()
    p = _path(store, seg)
    p.write_bytes(p.read_bytes()[:-3])
    report = store.verify()
    assert {(p.version, p.kind) for p in report.problems} == {(v1.id, "bad-manifest"), (v2.id, "bad-manifest")}


def test_verify_token_blocks(store: Store) -> None:
    store.create_dataset("toks", kind="tokens")
    with store.transaction("toks") as txn:
        txn.write_tokens([np.arange(700_000) % 1000])
        v = txn.commit()
    entry = store.manifest(v).shards[0]
    assert store.verify("toks").ok
    p = _path(store, entry.key)
    data = bytearray(p.read_bytes())
    data[64 + 5] ^= 0xFF
    p.write_bytes(bytes(data))
    kinds = [pr.kind for pr in store.verify("toks").problems]
    assert kinds == ["bad-shard"]  # whole-file checksum catches it first


def test_gc_respects_grace_and_references(store: Store) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(100))
    orphan = store.write_shard("web", _docs(5, 1000))  # published, never committed
    stale_staging = store.objects.staging_dir("old-txn")
    (stale_staging / "partial.parquet").write_bytes(b"x")
    young = store.gc(grace_s=3600)
    assert young.deleted == [] and young.kept_young >= 1
    old = time.time() - 7200
    os.utime(_path(store, orphan.key), (old, old))
    os.utime(stale_staging, (old, old))
    dry = store.gc(dry_run=True, grace_s=3600)
    assert dry.deleted == [orphan.key] and store.objects.exists(orphan.key)
    real = store.gc(grace_s=3600)
    assert real.deleted == [orphan.key] and not store.objects.exists(orphan.key)
    assert "old-txn" in real.staging_removed and not stale_staging.exists()
    assert store.verify().ok and store.read_table(v1.ref).num_rows == 100


def test_gc_deletes_nothing_when_a_manifest_is_unreadable(store: Store) -> None:
    store.create_dataset("web")
    v = store.commit_table("web", _docs(10))
    orphan = store.write_shard("web", _docs(1, 50))
    _path(store, v.manifest_key).unlink()
    r = store.gc(grace_s=0)
    assert r.unreadable_manifests == [v.manifest_key] and r.deleted == []
    assert store.objects.exists(orphan.key)
