"""Extension points the store calls for authorization, audit and shard encryption.

The store never decides who may do what and never holds keys: it calls a :class:`StoreHooks`
object at fixed points. The default (:class:`NullHooks`) allows everything, records nothing and
stores shards in the clear: the local single-user mode. ``granary.secure`` provides the real
implementation; :func:`granary.store.open_store` installs it when security settings ask for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

Action = str  # "read", "write", "create", "delete", "branch", "tag", "rollback", "verify", "gc", "export", "retire"


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

    def allows(self, action: Action, dataset: str) -> bool:
        return True

    def derive(self, store: Any, target: str, sources: list[str]) -> None:
        """Derived data inherits its sources' restrictions in this mode too: when a source has a policy
        (set by another process since this store was opened), merge it into the target's."""
        from granary.secure.policy import PolicyBook, merge

        book = PolicyBook(store.catalog)
        stored = book.all()
        if not any(s in stored for s in sources):
            return
        own = book.get(target)
        derived = merge({s: book.get(s) for s in sources}, own)
        if derived != own:
            book.set(target, derived)

    def open_decrypted(self, meta: dict[str, Any], raw: IO[bytes], *, key: str) -> IO[bytes]:
        from granary.errors import SecurityError

        raise SecurityError(
            f"object {key} is encrypted but no key provider is configured",
            hint="enable encryption support (see docs/security.md) so the store can unwrap its data key",
        )


def default_hooks(settings: Any, *, catalog: Any = None) -> StoreHooks:
    """The hooks a :class:`granary.store.Store` gets when none are given: the security layer when the
    environment asks for it (``GRANARY_SECURE=1``, ``GRANARY_AUTH=tokens`` or ``GRANARY_ENCRYPT=1``) or when
    the catalog already holds security state (a dataset policy, a principal, a role grant or a wrapped data
    key), so that policies, purposes, inherited restrictions and encrypted data are honoured in every mode;
    else :class:`NullHooks` (the single-user store with nothing to enforce)."""
    import os

    on = ("1", "true", "yes", "on")
    asked = (os.environ.get("GRANARY_SECURE", "").lower() in on or os.environ.get("GRANARY_ENCRYPT", "").lower() in on
             or os.environ.get("GRANARY_AUTH", "local").lower() == "tokens")
    if asked or (catalog is not None and security_in_use(catalog)):
        from granary.secure.hooks import SecureHooks

        return SecureHooks.from_settings(settings, catalog=catalog)
    return NullHooks()


def security_in_use(catalog: Any) -> bool:
    """Whether the catalog holds any policy, principal, grant or wrapped data key (one cheap query)."""
    import sqlalchemy as sa

    query = sa.text("SELECT 1 FROM secure_policies UNION ALL SELECT 1 FROM secure_principals "
                    "UNION ALL SELECT 1 FROM secure_grants UNION ALL SELECT 1 FROM secure_data_keys LIMIT 1")
    with catalog.read() as conn:
        return conn.execute(query).first() is not None
