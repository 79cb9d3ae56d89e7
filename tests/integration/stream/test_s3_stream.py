"""Streaming from an s3:// store (moto's S3 server) goes through the block cache and yields the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from granary.config import Settings
from granary.store import open_store
from granary.stream import StreamingDataset

pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests (granary[dev])")
pytest.importorskip("s3fs", reason="s3fs is needed for s3:// stores (granary[s3])")


def test_s3_tokens_stream_through_the_cache(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings.from_env(home=tmp_path / "g", storage_url="s3://granary/stream",
                                 storage_options={"endpoint_url": s3_endpoint})
    store = open_store(settings)
    store.create_dataset("toks", kind="tokens")
    docs = [np.arange(i * 100, i * 100 + 90, dtype=np.uint16) for i in range(60)]
    with store.transaction("toks") as txn:
        txn.write_tokens(docs, dtype="uint16", shard_tokens=1000)
        txn.commit(message="s3 tokens")
    assert store.local_path(store.manifest("toks").shards[0]) is None
    flat = np.concatenate(docs)
    ds = StreamingDataset("toks", batch_size=4, seq_len=32, seed=2, store=store, output="numpy",
                          token_dtype="native", segment_ids=True)
    rows = np.concatenate([b["tokens"] for b in ds])
    n = len(flat) // 32
    expected = flat[: n * 32].reshape(n, 32)
    assert {r.tobytes() for r in rows[:n]} == {r.tobytes() for r in expected}
    cache_dir = tmp_path / "g" / "cache" / "blocks"
    assert len(list(cache_dir.rglob("*.blk"))) == len(store.manifest("toks").shards)
    state = ds.state_dict()
    again = StreamingDataset("toks", batch_size=4, seq_len=32, seed=2, store=store, output="numpy",
                             token_dtype="native")
    again.load_state_dict({**state, "position": 8})
    assert np.array_equal(next(iter(again))["tokens"], rows[8:12])
