"""The security layer inside the store: encryption at rest, attacks on shards, rotation, shredding, purposes."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import AuthorizationError, IntegrityError, InvalidNameError
from granary.secure.crypto import DecryptingReader
from granary.secure.errors import CryptoError, PurposeError, ShreddedKeyError
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from granary.secure.retention import shred_version
from granary.store import Store
from granary.store.formats.tokens import TokenShardReader


def _docs(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)],
                     "text": [f"secret text number {i} of alice@example.com" for i in range(start, start + n)],
                     "subject_id": [f"s{i % 10}" for i in range(start, start + n)]})


def _path(store: Store, key: str) -> Path:
    local = store.objects.local_path(key)
    assert local is not None
    return Path(local)


def test_encrypted_documents_round_trip(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("web")
    hooks.guard.set_policy("web", Policy(encrypt=True))
    store.commit_table("web", _docs(500), message="v1")
    entry = store.manifest("web").shards[0]
    assert entry.meta["enc"]["alg"] == "aes-256-gcm-chunked"
    assert b"secret text" not in _path(store, entry.key).read_bytes()
    assert store.local_path(entry) is None  # never memory-map ciphertext
    assert store.read_table("web").column("text").to_pylist() == _docs(500).column("text").to_pylist()
    assert sum(b.num_rows for b in store.iter_batches("web", batch_rows=64)) == 500


def test_encrypted_token_shards_decrypt_block_by_block(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("toks", kind="tokens")
    hooks.guard.set_policy("toks", Policy(encrypt=True))
    docs = [np.arange(i * 1000, i * 1000 + 70_000, dtype=np.uint32) % 50_000 for i in range(10)]
    with store.transaction("toks") as txn:
        txn.write_tokens(docs, dtype="uint16")
        txn.commit(message="toks")
    entry = store.manifest("toks").shards[0]
    enc = entry.meta["enc"]
    assert enc["head_bytes"] == 64 and enc["chunk_bytes"] == entry.meta["block_tokens"] * 2
    with store.open_object(entry) as f:
        plain = f.read()
    reader = TokenShardReader(plain)
    assert np.array_equal(reader.tokens, np.concatenate(docs).astype(np.uint16))
    # random access: token block 0 starts chunk 1 (chunk 0 is the 64-byte header) and decrypts on its own
    raw = _path(store, entry.key).read_bytes()
    dek = hooks.guard.keys.get(enc["key_ref"])
    dr = DecryptingReader(io.BytesIO(raw), dek=dek, context=b"toks", where="t")
    assert bytes(dr.chunk(0)) == plain[:64]
    n = min(reader.num_tokens, reader.block_tokens)  # chunk 1 = token block 0, whatever the block size
    block0 = np.frombuffer(bytes(dr.chunk(1))[: n * 2], dtype=np.uint16)
    assert np.array_equal(block0, reader.tokens[:n])


def test_tampered_truncated_and_swapped_shards(store: Store, hooks: SecureHooks, tmp_path: Path) -> None:
    store.create_dataset("web")
    hooks.guard.set_policy("web", Policy(encrypt=True))
    store.commit_table("web", _docs(300), message="v1")
    store.commit_table("web", _docs(300, start=300), message="v2")
    a, b = store.manifest("web").shards
    pa_, pb = _path(store, a.key), _path(store, b.key)
    original = pa_.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x40
    pa_.chmod(0o644)
    pa_.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):  # the store's checksum sees it first
        store.read_shard(a)
    with pytest.raises(CryptoError, match="failed authentication"):  # and AES-GCM when checksums are skipped
        store.read_shard(a, verify=False)
    pa_.write_bytes(original[:-100])
    with pytest.raises(CryptoError, match="truncated"):
        store.read_shard(a, verify=False)
    pa_.write_bytes(pb.read_bytes())  # swap in another shard of the same dataset
    with pytest.raises(CryptoError, match="swapped"):
        store.read_shard(a, verify=False)
    pa_.write_bytes(original)
    assert store.read_shard(a).num_rows == 300  # nothing lost once restored
    errors = hooks.guard.audit.query(action="decrypt", outcome="error")
    assert len(errors) == 3 and all(r.dataset == "web" for r in errors)


def test_rotation_keeps_data_readable_and_shredding_kills_backups(store: Store, hooks: SecureHooks,
                                                                   settings: Settings, tmp_path: Path) -> None:
    store.create_dataset("web")
    hooks.guard.set_policy("web", Policy(encrypt=True))
    v1 = store.commit_table("web", _docs(100), message="v1")
    v2 = store.commit_table("web", _docs(100, start=100), message="v2", mode="overwrite")
    report = hooks.guard.rotate_keys(retire_old=True)
    assert report.rewrapped == 2
    fresh = SecureHooks.from_settings(settings, environ={})
    reader = Store(settings, hooks=fresh, catalog=fresh.guard.catalog)
    assert reader.read_table(f"web@{v1.id[:12]}").num_rows == 100
    old_entry = store.manifest(v1.id).shards[0]
    backup = tmp_path / "backup.bin"
    shutil.copy(_path(store, old_entry.key), backup)
    vid, count = shred_version(store, hooks.guard, f"web@{v1.id[:12]}")
    assert (vid, count) == (v1.id, 1)
    with pytest.raises(LookupError, match="expired"):
        reader.read_table(f"web@{v1.id[:12]}")
    with open(backup, "rb") as raw, pytest.raises(ShreddedKeyError):  # a restored backup is useless too
        fresh.open_decrypted(dict(old_entry.meta["enc"]), raw, key=old_entry.key)
    assert reader.read_table("web").num_rows == 100  # the head (v2) is untouched
    with pytest.raises(ValueError, match="head"):
        shred_version(store, hooks.guard, f"web@{v2.id[:12]}")
    assert [r.action for r in hooks.guard.audit.query(action="key.shred")] == ["key.shred"]


def test_purpose_is_enforced_on_reads_and_audited(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("eval")
    store.commit_table("eval", _docs(10), message="v1")
    hooks.guard.set_policy("eval", Policy(purposes=frozenset({"evaluation"})))
    with pytest.raises(PurposeError, match="pretraining"):
        store.read_table("eval", purpose="pretraining")
    assert store.read_table("eval", purpose="evaluation").num_rows == 10
    rec = hooks.guard.audit.query(dataset="eval", outcome="denied")[0]
    assert rec.action == "read" and "pretraining" in rec.details["reason"]


def test_policy_propagates_from_what_a_pipeline_read(store: Store, hooks: SecureHooks) -> None:
    for name, policy in (("a", Policy(licenses=frozenset({"CC-BY-4.0"}), purposes=frozenset({"research",
                                                                                             "pretraining"}))),
                         ("b", Policy(licenses=frozenset({"CC-BY-SA-4.0"}), tags=frozenset({"pii:raw"}),
                                      purposes=frozenset({"pretraining"})))):
        store.create_dataset(name)
        store.commit_table(name, _docs(5), message="v1")
        hooks.guard.set_policy(name, policy)
    table = pa.concat_tables([store.read_table("a", purpose="pretraining"),
                              store.read_table("b", purpose="pretraining")])
    store.create_dataset("mix")
    store.commit_table("mix", table, message="mixed")
    derived = hooks.guard.policies.get("mix")
    assert derived.purposes == {"pretraining"} and derived.tags == {"pii:raw"}
    assert derived.licenses == {"CC-BY-4.0", "CC-BY-SA-4.0"} and derived.sources == {"a", "b"}


def test_tokens_mode_through_open_store(settings: Settings, hooks: SecureHooks, store: Store,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.store import open_store

    store.create_dataset("web")
    store.commit_table("web", _docs(10), message="v1")
    hooks.guard.add_principal("reader-svc", kind="service")
    hooks.guard.grant("reader-svc", "reader", dataset="web")
    token = hooks.guard.issue_token("reader-svc", scopes=("read",))
    monkeypatch.setenv("GRANARY_HOME", str(settings.home))
    monkeypatch.setenv("GRANARY_GC_GRACE_S", "0")
    monkeypatch.setenv("GRANARY_AUTH", "tokens")
    monkeypatch.setenv("GRANARY_TOKEN", token.secret)
    remote = open_store()
    assert isinstance(remote.hooks, SecureHooks)
    assert remote.read_table("web").num_rows == 10
    with pytest.raises(AuthorizationError):
        remote.commit_table("web", _docs(3), message="sneaky")
    with pytest.raises(AuthorizationError):
        remote.gc()
    assert store.read_table("web").num_rows == 10  # nothing lost
    denied = hooks.guard.audit.query(principal="reader-svc", outcome="denied")
    assert [r.action for r in denied] == ["write", "gc"]


def test_bad_names_are_refused(store: Store, hooks: SecureHooks) -> None:
    for bad in ("../etc", "a/../../b", "/abs", "x" * 300):
        with pytest.raises(InvalidNameError):
            store.create_dataset(bad)
    with pytest.raises(ValueError):
        hooks.guard.set_policy("web", Policy(tenant="../../root"))
    with pytest.raises(ValueError):
        hooks.guard.add_principal("../admin")


def test_no_data_key_without_read_permission(store: Store, hooks: SecureHooks, settings: Settings) -> None:
    from granary.secure.guard import Guard

    store.create_dataset("web")
    hooks.guard.set_policy("web", Policy(encrypt=True))
    store.commit_table("web", _docs(20), message="v1")
    entry = store.manifest("web").shards[0]
    hooks.guard.add_principal("bob")
    bob = SecureHooks(Guard(hooks.guard.catalog, hooks.guard.settings, principal=hooks.guard.registry.get("bob")))
    bob_store = Store(settings, hooks=bob, catalog=hooks.guard.catalog)
    with pytest.raises(AuthorizationError):  # bypassing read_table and opening the shard directly
        bob_store.open_object(entry)
    hooks.guard.grant("bob", "reader", dataset="web")
    with bob_store.open_object(entry) as f:
        assert f.read(4) == b"PAR1"
    refused = hooks.guard.audit.query(principal="bob", outcome="denied")
    assert [r.object for r in refused] == [entry.key]


def test_encrypted_token_shard_random_access(store: Store, hooks: SecureHooks) -> None:
    from granary.secure.tokenshard import EncryptedTokenShard

    store.create_dataset("toks", kind="tokens")
    hooks.guard.set_policy("toks", Policy(encrypt=True))
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 60_000, int(n), dtype=np.uint16) for n in rng.integers(1, 200_000, 30)]
    with store.transaction("toks") as txn:
        txn.write_tokens(docs, dtype="uint16")
        txn.commit(message="toks")
    entry = store.manifest("toks").shards[0]
    flat = np.concatenate(docs)
    shard = EncryptedTokenShard.open(store, entry, cache_bytes=1)  # one block cached at a time
    assert shard.num_tokens == len(flat) and shard.num_blocks >= 3
    assert np.array_equal(shard.doc_offsets, np.concatenate([[0], np.cumsum([len(d) for d in docs])]))
    for start in [0, shard.block_tokens - 5, len(flat) - 7, *rng.integers(0, len(flat) - 3000, 20).tolist()]:
        assert np.array_equal(shard.read(start, start + 3000 if start + 3000 <= len(flat) else len(flat)),
                              flat[start:start + 3000])
    with pytest.raises(IndexError):
        shard.read(0, len(flat) + 1)
    kept = shard.read(5, 105)  # a view into block 0
    shard.read(shard.block_tokens, shard.block_tokens + 10)  # evicts block 0 (one block cached)
    shard.read(0, 10)  # reloads block 0 into other memory: the live view's buffer is never reused
    shard.read(2 * shard.block_tokens, 2 * shard.block_tokens + 10)
    assert np.array_equal(kept, flat[5:105])
    shard.close()
    # damage block 1 only: block 0 still reads, block 1 fails authentication
    path = _path(store, entry.key)
    data = bytearray(path.read_bytes())
    layout_off = 64 + 64 + 16 + entry.meta["block_tokens"] * 2 + 16 + 100  # inside chunk 2 = token block 1
    data[layout_off] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    shard = EncryptedTokenShard.open(store, entry)
    assert np.array_equal(shard.read(0, 10), flat[:10])
    with pytest.raises(CryptoError, match="chunk 2"):
        shard.read(shard.block_tokens, shard.block_tokens + 10)
