"""The same store code path on s3:// storage, against a local S3-compatible server (moto).

No real S3 endpoint is reachable from the test machines, so moto's server stands in for it; the store
talks to it over HTTP through s3fs exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.store import open_store

pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests (granary[dev])")
pytest.importorskip("s3fs", reason="s3fs is needed for s3:// stores (granary[s3])")


def test_commit_read_verify_gc_on_s3(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings.from_env(home=tmp_path / "g", storage_url="s3://granary/team-a",
                                 storage_options={"endpoint_url": s3_endpoint}, shard_size_bytes=16 * 1024,
                                 row_group_bytes=4096)
    store = open_store(settings)
    assert not store.objects.is_local
    store.create_dataset("web")
    table = pa.table({"id": [f"d{i}" for i in range(300)], "text": [f"row {i} " * 10 for i in range(300)]})
    v = store.commit_table("web", table, message="on s3")
    assert v.num_shards >= 2
    assert store.read_table("web").equals(table)
    assert store.local_path(store.manifest(v).shards[0]) is None
    store.create_dataset("toks", kind="tokens")
    with store.transaction("toks") as txn:
        txn.write_tokens([np.arange(100), np.arange(50)])
        txn.commit()
    assert store.verify().ok
    orphan = store.write_shard("web", table.slice(0, 3))
    report = store.gc(grace_s=0)
    assert orphan.key in report.deleted and store.verify().ok
    # a damaged object is found the same way as on disk
    key = store.manifest(v).shards[0].key
    store.objects.put_bytes(key, b"not parquet")
    problems = store.verify("web").problems
    assert [p.key for p in problems] == [key]
