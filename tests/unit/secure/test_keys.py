"""Key providers, the data-key store, rotation and crypto-shredding."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from granary.catalog import Catalog
from granary.errors import ConfigError
from granary.secure.errors import CryptoError, KeyMissingError, ShreddedKeyError
from granary.secure.keys import KEY_PROVIDERS, EnvKeyProvider, KeyProvider, LocalKeyring, get_key_provider
from granary.secure.keystore import DataKeyStore
from granary.secure.settings import SecureSettings


def test_local_keyring_is_private_and_persistent(tmp_path: Path) -> None:
    ring = LocalKeyring(tmp_path / "keys" / "keyring.json")
    key_id = ring.current_key_id("default")
    assert re.fullmatch(r"default-1-[0-9a-f]{8}", key_id)
    assert (tmp_path / "keys" / "keyring.json").stat().st_mode & 0o777 == 0o600
    wrapped = ring.wrap(key_id, b"k" * 32, b"aad")
    again = LocalKeyring(tmp_path / "keys" / "keyring.json")
    assert again.unwrap(key_id, wrapped, b"aad") == b"k" * 32
    with pytest.raises(CryptoError, match="failed to unwrap"):
        again.unwrap(key_id, wrapped, b"other aad")
    assert ring.new_master_key("default").startswith("default-2-")
    assert ring.current_key_id("acme").startswith("acme-1-")  # per-tenant master keys
    sig1 = ring.signing_key().public_key().public_bytes_raw()
    assert LocalKeyring(ring.path).signing_key().public_key().public_bytes_raw() == sig1


def test_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    ring = LocalKeyring(tmp_path / "keyring.json")
    ring.current_key_id("default")
    os.chmod(ring.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalKeyring(ring.path).current_key_id("default")


def test_bad_tenant_names_are_refused(tmp_path: Path) -> None:
    ring = LocalKeyring(tmp_path / "keyring.json")
    for bad in ("../etc", "A", "", "x" * 70, "a/b"):
        with pytest.raises(ValueError, match="invalid tenant"):
            ring.new_master_key(bad)


def test_env_provider_with_rotation_pair() -> None:
    old, new = os.urandom(32), os.urandom(32)
    env = {"GRANARY_MASTER_KEY": base64.b64encode(old).decode()}
    p_old = EnvKeyProvider(env)
    old_id = p_old.current_key_id("default")
    wrapped = p_old.wrap(old_id, b"d" * 32, b"a")
    env2 = {"GRANARY_MASTER_KEY": base64.b64encode(new).decode(),
            "GRANARY_MASTER_KEY_PREVIOUS": base64.b64encode(old).decode()}
    p_new = EnvKeyProvider(env2)
    assert p_new.current_key_id("default") != old_id
    assert p_new.unwrap(old_id, wrapped, b"a") == b"d" * 32
    with pytest.raises(KeyMissingError, match="GRANARY_MASTER_KEY"):
        EnvKeyProvider({"GRANARY_MASTER_KEY": base64.b64encode(new).decode()}).unwrap(old_id, wrapped, b"a")
    with pytest.raises(ConfigError, match="32-byte"):
        EnvKeyProvider({"GRANARY_MASTER_KEY": base64.b64encode(b"short").decode()}).current_key_id("default")
    with pytest.raises(KeyMissingError):
        EnvKeyProvider({}).current_key_id("default")


def test_provider_registry(tmp_path: Path) -> None:
    settings = SecureSettings.from_env(tmp_path, environ={"GRANARY_KEY_PROVIDER": "local"})
    assert isinstance(get_key_provider(settings), LocalKeyring)
    with pytest.raises(ConfigError, match="unknown key provider"):
        get_key_provider(SecureSettings.from_env(tmp_path, environ={"GRANARY_KEY_PROVIDER": "vault-x"}))


def test_data_keys_rotate_without_rewrapping_data_and_shred(tmp_path: Path, catalog: Catalog) -> None:
    ring = LocalKeyring(tmp_path / "keyring.json")
    store = DataKeyStore(catalog, ring)
    refs = [store.create("web", "default") for _ in range(7)]
    other = store.create("toks", "acme")
    fresh = DataKeyStore(catalog, LocalKeyring(ring.path))  # no cache
    assert all(fresh.get(ref) == dek for ref, dek in refs)
    report = store.rotate("default", retire_old=True)
    assert report.rewrapped == 7 and len(report.retired) == 1 and report.retired[0].startswith("default-1-")
    fresh = DataKeyStore(catalog, LocalKeyring(ring.path))
    assert all(fresh.get(ref) == dek for ref, dek in refs)  # same data keys, new wrapping
    assert fresh.get(other[0]) == other[1]  # another tenant is untouched
    assert store.shred([refs[0][0], refs[1][0]]) == 2
    assert store.shred([refs[0][0]]) == 0  # idempotent
    with pytest.raises(ShreddedKeyError):
        DataKeyStore(catalog, ring).get(refs[0][0])
    with pytest.raises(KeyMissingError, match="no data key"):
        fresh.get("00" * 16)
    assert sorted(store.refs("web")) == sorted(r for r, _ in refs[2:])


class FakeKms(KeyProvider):
    """An external KMS stand-in: keys never leave it, only wrap/unwrap calls cross the boundary."""

    name = "fake-kms"

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.calls = 0

    def current_key_id(self, tenant: str) -> str:
        ids = sorted(k for k in self.keys if k.startswith(f"kms/{tenant}/"))
        return ids[-1] if ids else self.new_master_key(tenant)

    def new_master_key(self, tenant: str) -> str:
        key_id = f"kms/{tenant}/{len(self.keys) + 1:04d}"
        self.keys[key_id] = os.urandom(32)
        return key_id

    def wrap(self, key_id: str, dek: bytes, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.calls += 1
        nonce = os.urandom(12)
        return nonce + AESGCM(self.keys[key_id]).encrypt(nonce, dek, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.calls += 1
        return AESGCM(self.keys[key_id]).decrypt(wrapped[:12], wrapped[12:], aad)


def test_plugin_provider_through_the_registry(tmp_path: Path, catalog: Catalog,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kms = FakeKms()
    monkeypatch.setitem(KEY_PROVIDERS, "fake-kms", lambda _settings: kms)
    provider = get_key_provider(SecureSettings.from_env(tmp_path, environ={"GRANARY_KEY_PROVIDER": "fake-kms"}))
    assert provider is kms
    store = DataKeyStore(catalog, provider)
    ref, dek = store.create("web", "default")
    assert DataKeyStore(catalog, provider).get(ref) == dek
    report = store.rotate("default")
    assert report.new_key_id == "kms/default/0002" and report.rewrapped == 1
    assert DataKeyStore(catalog, provider).get(ref) == dek
    assert kms.calls == 5  # wrap, unwrap, rotate (unwrap + wrap), unwrap
    with pytest.raises(KeyMissingError, match="cannot destroy"):
        kms.retire("kms/default/0001")


def test_a_lost_keyring_is_an_error_and_key_ids_are_never_reused(tmp_path: Path, catalog: Catalog) -> None:
    ring = LocalKeyring(tmp_path / "keyring.json")
    store = DataKeyStore(catalog, ring)
    ref, _ = store.create("web", "default")
    old_id = ring.current_key_id("default")
    ring.path.unlink()  # the keyring is lost
    fresh = DataKeyStore(catalog, LocalKeyring(ring.path))
    with pytest.raises(KeyMissingError, match="restore the keyring"):
        fresh.create("web", "default")  # no silent new master key
    assert not ring.path.exists()
    with pytest.raises(KeyMissingError, match="keyring file is missing"):
        fresh.get(ref)  # reading says what is wrong: not "tampered"
    # a keyring started anew on purpose (another store) never reuses an id
    other = LocalKeyring(tmp_path / "other.json")
    assert other.current_key_id("default") != old_id
