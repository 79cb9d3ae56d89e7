"""Master-key providers: a local keyring file (default), environment variables, and plugins for external KMSs.

A provider wraps and unwraps data keys with a tenant's master key, named by a key id, and can create a new
master key for rotation. Plugins register a class under the ``granary.key_providers`` entry-point group.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from granary.errors import ConfigError
from granary.secure.errors import CryptoError, KeyMissingError
from granary.secure.settings import SecureSettings

log = logging.getLogger(__name__)

TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if valid (it becomes part of key ids and file contents), else raise ValueError."""
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise ValueError(f"invalid tenant name {tenant!r}: use 1-64 characters of a-z, 0-9, '_' or '-'")
    return tenant


class KeyProvider(ABC):
    """Holds master keys (one current key per tenant) and wraps data keys with them.

    Subclass this for an external KMS: implement the abstract methods by calling the KMS (``wrap`` and
    ``unwrap`` map to its Encrypt/Decrypt with ``aad`` as the encryption context) and register the class
    under the ``granary.key_providers`` entry-point group; ``GRANARY_KEY_PROVIDER=<name>`` selects it.
    """

    name: str = "abstract"

    @abstractmethod
    def current_key_id(self, tenant: str) -> str:
        """The id of the tenant's current master key (created on first use where the provider can)."""

    @abstractmethod
    def wrap(self, key_id: str, dek: bytes, aad: bytes) -> bytes:
        """Encrypt a data key under master key ``key_id``, binding ``aad``."""

    @abstractmethod
    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Decrypt a wrapped data key; raise KeyMissingError or CryptoError on failure."""

    @abstractmethod
    def new_master_key(self, tenant: str) -> str:
        """Create a new current master key for ``tenant`` (rotation) and return its id."""

    def holds(self, key_id: str) -> bool:
        """Whether the provider holds master key ``key_id`` (True when it cannot tell, e.g. a remote KMS)."""
        return True

    def retire(self, key_id: str) -> None:
        """Destroy an old master key once no data key is wrapped under it (optional for a provider)."""
        raise KeyMissingError(f"the {self.name} key provider cannot destroy master key {key_id}",
                              hint="destroy it in the key management system itself")

    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs audit checkpoints and forget records."""
        raise KeyMissingError(f"the {self.name} key provider holds no signing key",
                              hint="set GRANARY_SIGNING_KEY to a base64 Ed25519 private key (32 bytes)")


def _aes_wrap(master: bytes, dek: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(master).encrypt(nonce, dek, aad)


def _aes_unwrap(master: bytes, wrapped: bytes, aad: bytes, key_id: str) -> bytes:
    try:
        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], aad)
    except (InvalidTag, ValueError):
        raise CryptoError(f"a data key wrapped under master key {key_id} failed to unwrap "
                          "(wrong master key, or the wrapped key was altered)", where=key_id) from None


class LocalKeyring(KeyProvider):
    """Master keys and the signing key in a JSON file created with mode 0600 (directory 0700).

    Args:
        path: the keyring file (created on first use).
    """

    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cache: dict[str, Any] | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            data = self._load()
            yield data
            self._save(data)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": 1, "current": {}, "master_keys": {}, "signing_key": None}
        mode = self.path.stat().st_mode & 0o077
        if mode:
            raise ConfigError(f"keyring {self.path} is readable by other users (mode {oct(mode)})",
                              hint=f"run: chmod 600 {self.path}")
        data = json.loads(self.path.read_text())
        self._cache = data
        return data

    def _save(self, data: Mapping[str, Any]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._cache = dict(data)

    def _data(self) -> dict[str, Any]:
        return self._cache if self._cache is not None else self._load()

    def current_key_id(self, tenant: str) -> str:
        current = self._data()["current"]
        assert isinstance(current, dict)
        if tenant in current:
            return str(current[tenant])
        return self.new_master_key(tenant)

    def new_master_key(self, tenant: str) -> str:
        check_tenant(tenant)
        with self._locked() as data:
            keys = data["master_keys"]
            assert isinstance(keys, dict) and isinstance(data["current"], dict)
            n = 1 + sum(1 for k in keys.values() if k["tenant"] == tenant)
            key_id = f"{tenant}-{n}-{os.urandom(4).hex()}"  # never reused, even by a keyring created anew
            keys[key_id] = {"tenant": tenant, "key": _b64(os.urandom(32)), "created_at": time.time()}
            data["current"][tenant] = key_id
        log.info("created master key %s", key_id)
        return key_id

    def _master(self, key_id: str) -> bytes:
        for attempt in (0, 1):
            data = self._data() if attempt == 0 else self._load()
            entry = data["master_keys"].get(key_id)
            if entry is not None:
                return base64.b64decode(entry["key"])
        missing = "" if self.path.exists() else " (the keyring file is missing)"
        raise KeyMissingError(f"master key {key_id} is not in the keyring {self.path}{missing}",
                              hint="restore the keyring from its backup (or point GRANARY_KEYRING at it), or use "
                              "the key provider that holds it")

    def holds(self, key_id: str) -> bool:
        return key_id in self._load()["master_keys"]

    def wrap(self, key_id: str, dek: bytes, aad: bytes) -> bytes:
        return _aes_wrap(self._master(key_id), dek, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return _aes_unwrap(self._master(key_id), wrapped, aad, key_id)

    def retire(self, key_id: str) -> None:
        with self._locked() as data:
            current = data["current"]
            assert isinstance(current, dict)
            if key_id in current.values():
                raise ValueError(f"master key {key_id} is current; rotate first")
            data["master_keys"].pop(key_id, None)

    def signing_key(self) -> Ed25519PrivateKey:
        raw = self._data().get("signing_key")
        if raw is None:
            with self._locked() as data:
                if data.get("signing_key") is None:
                    data["signing_key"] = _b64(os.urandom(32))
                raw = data["signing_key"]
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(str(raw)))


class EnvKeyProvider(KeyProvider):
    """Master keys from environment variables (for containers and CI).

    ``GRANARY_MASTER_KEY`` (tenant ``default``) or ``GRANARY_MASTER_KEY_<TENANT>`` hold a base64 32-byte key;
    ``..._PREVIOUS`` holds the key being rotated away from. Key ids carry a fingerprint of the key.
    """

    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def _var(self, tenant: str) -> str:
        return "GRANARY_MASTER_KEY" if tenant == "default" else f"GRANARY_MASTER_KEY_{tenant.upper()}"

    def _keys(self, tenant: str) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for var in (self._var(tenant), self._var(tenant) + "_PREVIOUS"):
            raw = self._env.get(var)
            if raw:
                key = base64.b64decode(raw)
                if len(key) != 32:
                    raise ConfigError(f"{var} must be a base64-encoded 32-byte key, got {len(key)} bytes",
                                      hint="generate one with: python -c 'import os,base64;"
                                      "print(base64.b64encode(os.urandom(32)).decode())'")
                found[f"env:{tenant}:{hashlib.sha256(key).hexdigest()[:12]}"] = key
        return found

    def current_key_id(self, tenant: str) -> str:
        keys = self._keys(check_tenant(tenant))
        if not keys:
            raise KeyMissingError(f"no master key for tenant {tenant}", hint=f"set {self._var(tenant)}")
        return next(iter(keys))

    def _master(self, key_id: str) -> bytes:
        _, tenant, _ = key_id.split(":", 2)
        key = self._keys(tenant).get(key_id)
        if key is None:
            raise KeyMissingError(f"master key {key_id} is not in the environment",
                                  hint=f"set {self._var(tenant)} (or ..._PREVIOUS while rotating) to it")
        return key

    def holds(self, key_id: str) -> bool:
        parts = key_id.split(":", 2)
        return len(parts) == 3 and parts[0] == "env" and key_id in self._keys(parts[1])

    def wrap(self, key_id: str, dek: bytes, aad: bytes) -> bytes:
        return _aes_wrap(self._master(key_id), dek, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return _aes_unwrap(self._master(key_id), wrapped, aad, key_id)

    def new_master_key(self, tenant: str) -> str:
        return self.current_key_id(tenant)

    def signing_key(self) -> Ed25519PrivateKey:
        raw = self._env.get("GRANARY_SIGNING_KEY")
        if not raw:
            return super().signing_key()
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(raw))


KEY_PROVIDERS: dict[str, Callable[[SecureSettings], KeyProvider]] = {
    "local": lambda s: LocalKeyring(s.keyring_path),
    "env": lambda s: EnvKeyProvider(),
}


def get_key_provider(settings: SecureSettings) -> KeyProvider:
    """The provider named by ``settings.key_provider``: built in, or a ``granary.key_providers`` plugin."""
    factory = KEY_PROVIDERS.get(settings.key_provider)
    if factory is None:
        for ep in entry_points(group="granary.key_providers"):
            if ep.name == settings.key_provider:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"unknown key provider {settings.key_provider!r}",
                          hint=f"use one of {sorted(KEY_PROVIDERS)} or install the plugin that provides it")
    return factory(settings)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
