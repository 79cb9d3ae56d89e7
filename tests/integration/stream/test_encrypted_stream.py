"""Encrypted token shards stream through the security layer's decrypting reader (never cached in plaintext)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def _two_versions(tmp_path: Path) -> tuple[Store, SecureHooks]:
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
    return store, hooks


def test_encrypted_blocks_decrypt_lazily_in_gather_threads_and_forked_workers(tmp_path: Path) -> None:
    """Blocks are decrypted on first use (not at open), by gather threads or DataLoader workers forked before
    the parent had decrypted them; every variant equals the plain stream."""
    from granary.stream import StreamingLoader
    from granary.stream.shards import BlockDecryptor

    store, _ = _two_versions(tmp_path)
    plain = StreamingDataset("plain", batch_size=8, seq_len=24, seed=4, store=store, output="numpy",
                             token_dtype="native", verify=False)
    want = np.concatenate([b["tokens"] for b in plain])
    lazy = StreamingDataset("secret", batch_size=8, seq_len=24, seed=4, store=store, output="numpy",
                            token_dtype="native", num_threads=2)
    assert isinstance(lazy.sources[0].verifier, BlockDecryptor)
    assert np.array_equal(np.concatenate([b["tokens"] for b in lazy]), want)
    forked = StreamingDataset("secret", batch_size=8, seq_len=24, seed=4, store=store, output="numpy",
                              token_dtype="native")
    got = np.concatenate([np.asarray(b["tokens"]) for b in StreamingLoader(forked, num_workers=2)])
    assert np.array_equal(got, want)


def test_a_tampered_encrypted_block_stops_the_stream_at_its_batch(tmp_path: Path) -> None:
    from granary.secure.crypto import HEADER_BYTES, TAG_BYTES
    from granary.secure.errors import CryptoError
    from granary.store.formats.tokens.layout import DEFAULT_BLOCK_BYTES, HEADER_SIZE

    settings = Settings.from_env(environ={}, home=tmp_path / "home")
    hooks = SecureHooks.from_settings(settings, environ={})
    store = Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
    bt = DEFAULT_BLOCK_BYTES // 2
    store.create_dataset("secret", kind="tokens")
    hooks.guard.set_policy("secret", Policy(encrypt=True))
    with store.transaction("secret") as txn:
        txn.write_tokens([np.full(bt, 7, np.uint16), np.full(bt, 8, np.uint16), np.full(bt, 9, np.uint16)],
                         dtype="uint16", shard_tokens=4 * bt)
        txn.commit(message="three blocks")
    entry = store.manifest("secret").shards[0]
    path = Path(store.objects.local_path(entry.key) or "")
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + HEADER_SIZE + DEFAULT_BLOCK_BYTES + 2 * TAG_BYTES + 100] ^= 0x01  # chunk 2 = token block 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    for threads in (0, 2):
        ds = StreamingDataset("secret", batch_size=16, seq_len=1024, store=store, output="numpy", shuffle=False,
                              token_dtype="native", num_threads=threads)
        it = iter(ds)
        for _ in range(bt // 1024 // 16):  # every batch of block 0
            assert (next(it)["tokens"] == 7).all()
        with pytest.raises(CryptoError, match=r"chunk 2 of \d+ failed authentication"):
            next(it)
