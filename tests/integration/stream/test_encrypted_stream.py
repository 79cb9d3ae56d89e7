"""Encrypted token shards stream through the security layer's decrypting reader (never cached in plaintext)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from granary.config import Settings
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from granary.store import Store
from granary.stream import StreamingDataset


def test_encrypted_tokens_stream_like_plain_ones(tmp_path: Path) -> None:
    settings = Settings.from_env(environ={}, home=tmp_path / "home")
    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    docs = [np.arange(i * 50, i * 50 + 40, dtype=np.uint16) for i in range(100)]
    for name, encrypt in (("plain", False), ("secret", True)):
        store.create_dataset(name, kind="tokens")
        hooks.guard.set_policy(name, Policy(encrypt=encrypt))
        with store.transaction(name) as txn:
            txn.write_tokens(docs, dtype="uint16", shard_tokens=1500)
            txn.commit(message=name)
    assert "enc" in store.manifest("secret").shards[0].meta
    batches = {}
    for name in ("plain", "secret"):
        ds = StreamingDataset(name, batch_size=8, seq_len=24, seed=4, store=store, output="numpy",
                              token_dtype="native")
        batches[name] = np.concatenate([b["tokens"] for b in ds])
    assert np.array_equal(batches["plain"], batches["secret"])
    assert not (tmp_path / "home" / "cache").exists()  # nothing decrypted was written to disk
