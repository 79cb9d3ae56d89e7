"""Security settings read from the environment: auth mode, token, key provider, tenant and purpose."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from granary.errors import ConfigError

AuthMode = Literal["local", "tokens"]


@dataclass(kw_only=True, frozen=True)
class SecureSettings:
    """How the security layer identifies callers and finds keys.

    Attributes:
        auth: ``local`` (default: the OS user is an admin, no set-up) or ``tokens`` (``GRANARY_AUTH``).
        token: the API token used in ``tokens`` mode (``GRANARY_TOKEN``).
        key_provider: short name of the master-key provider (``GRANARY_KEY_PROVIDER``: local, env or a plugin).
        keyring_path: the local keyring file (``GRANARY_KEYRING``, default ``HOME/keys/keyring.json``).
        tenant: the tenant new datasets and keys belong to (``GRANARY_TENANT``, default ``default``).
        purpose: the purpose readers declare when none is passed (``GRANARY_PURPOSE``).
        encrypt: encrypt new shards by default (``GRANARY_ENCRYPT=1``).
        origin: where calls come from, recorded in audit records (``GRANARY_ORIGIN``, default host:pid).
        audit_public_key: hex Ed25519 public key audit checkpoints must be signed by, configured outside the
            catalog (``GRANARY_AUDIT_PUBLIC_KEY``, or the file named by ``GRANARY_AUDIT_PUBLIC_KEY_FILE``;
            default: the public half of the key provider's signing key).
        checkpoint_dir: a write-once folder checkpoints are exported to and verified from by default
            (``GRANARY_AUDIT_CHECKPOINTS``).
    """

    auth: AuthMode = "local"
    token: str | None = None
    key_provider: str = "local"
    keyring_path: Path
    tenant: str = "default"
    purpose: str | None = None
    encrypt: bool = False
    origin: str | None = None
    audit_public_key: str | None = None
    checkpoint_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.auth not in ("local", "tokens"):
            raise ConfigError(f"GRANARY_AUTH must be 'local' or 'tokens', got {self.auth!r}")
        if not self.tenant or len(self.tenant) > 128:
            raise ConfigError(f"GRANARY_TENANT must be 1-128 characters, got {self.tenant!r}")

    @classmethod
    def from_env(cls, home: Path, environ: dict[str, str] | None = None, **overrides: object) -> SecureSettings:
        """Read the settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "auth": (env.get("GRANARY_AUTH") or "local").strip().lower(),
            "token": env.get("GRANARY_TOKEN") or None,
            "key_provider": env.get("GRANARY_KEY_PROVIDER") or "local",
            "keyring_path": Path(env.get("GRANARY_KEYRING") or home / "keys" / "keyring.json").expanduser(),
            "tenant": env.get("GRANARY_TENANT") or "default",
            "purpose": env.get("GRANARY_PURPOSE") or None,
            "encrypt": (env.get("GRANARY_ENCRYPT") or "").lower() in ("1", "true", "yes", "on"),
            "origin": env.get("GRANARY_ORIGIN") or None,
            "audit_public_key": _public_key(env),
            "checkpoint_dir": Path(env["GRANARY_AUDIT_CHECKPOINTS"]).expanduser()
            if env.get("GRANARY_AUDIT_CHECKPOINTS") else None,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _public_key(env: os._Environ[str] | dict[str, str]) -> str | None:
    value = env.get("GRANARY_AUDIT_PUBLIC_KEY") or None
    path = env.get("GRANARY_AUDIT_PUBLIC_KEY_FILE") or None
    if value is None and path is not None:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"GRANARY_AUDIT_PUBLIC_KEY_FILE={path} cannot be read: {exc}") from None
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError("the trusted audit public key must be 64 hex characters (a raw Ed25519 public key)",
                          hint="print yours with `granary audit public-key`")
    return value
