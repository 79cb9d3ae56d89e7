"""Extension points the store calls for authorization, audit and shard encryption.

The store never decides who may do what and never holds keys: it calls a :class:`StoreHooks`
object at fixed points. The default (:class:`NullHooks`) allows everything, records nothing and
stores shards in the clear: the local single-user mode. ``granary.secure`` provides the real
implementation; :func:`granary.store.open_store` installs it when security settings ask for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

Action = str  # "read", "write", "create", "delete", "branch", "tag", "rollback", "verify", "gc", "export"


class StoreHooks(Protocol):
    """What the store calls; every method must be cheap when the feature is off."""

    def authorize(self, action: Action, dataset: str, *, purpose: str | None = None) -> None:
        """Raise :class:`granary.errors.AuthorizationError` if the current principal may not do ``action``."""

    def record(
        self,
        action: Action,
        dataset: str,
        *,
        version: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a completed (or failed) operation, e.g. in the audit log."""

    def encrypts(self, dataset: str) -> bool:
        """Whether new shards of ``dataset`` are encrypted."""

    def encrypt_file(self, dataset: str, src: Path, dst: Path, *, fmt: str) -> dict[str, Any]:
        """Encrypt ``src`` into ``dst``; return metadata stored in the shard entry's ``meta['enc']``."""

    def open_decrypted(self, meta: dict[str, Any], raw: IO[bytes], *, key: str) -> IO[bytes]:
        """Wrap a raw encrypted object in a seekable file that yields plaintext."""

    def prepare_gc(self, store: Any, *, dry_run: bool = False) -> dict[str, Any]:
        """Before gc collects: apply retention policies and finish expired versions; returns a summary."""


class NullHooks:
    """Single-user local mode: everything allowed, nothing recorded, nothing encrypted."""

    def authorize(self, action: Action, dataset: str, *, purpose: str | None = None) -> None:
        return None

    def record(
        self,
        action: Action,
        dataset: str,
        *,
        version: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        return None

    def encrypts(self, dataset: str) -> bool:
        return False

    def encrypt_file(self, dataset: str, src: Path, dst: Path, *, fmt: str) -> dict[str, Any]:
        raise NotImplementedError("NullHooks never encrypts")  # encrypts() is False, so never called

    def prepare_gc(self, store: Any, *, dry_run: bool = False) -> dict[str, Any]:
        return {}

    def open_decrypted(self, meta: dict[str, Any], raw: IO[bytes], *, key: str) -> IO[bytes]:
        from granary.errors import SecurityError

        raise SecurityError(
            f"object {key} is encrypted but no key provider is configured",
            hint="enable encryption support (see docs/security.md) so the store can unwrap its data key",
        )


def default_hooks(settings: Any) -> StoreHooks:
    """The hooks :func:`granary.store.open_store` installs: the security layer when the environment asks
    for it (``GRANARY_SECURE=1``, ``GRANARY_AUTH=tokens`` or ``GRANARY_ENCRYPT=1``), else :class:`NullHooks`."""
    import os

    on = ("1", "true", "yes", "on")
    if (os.environ.get("GRANARY_SECURE", "").lower() in on or os.environ.get("GRANARY_ENCRYPT", "").lower() in on
            or os.environ.get("GRANARY_AUTH", "local").lower() == "tokens"):
        from granary.secure.hooks import SecureHooks

        return SecureHooks.from_settings(settings)
    return NullHooks()
