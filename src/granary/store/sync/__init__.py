"""Remotes, push/pull/sync of dataset branches, and backups of a whole store (see docs/sync.md)."""

from __future__ import annotations

from granary.store.sync.ops import SyncReport, TransferOptions, pull, push, sync
from granary.store.sync.registry import add_remote, list_remotes, open_remote, remove_remote
from granary.store.sync.remote import Remote, RemoteRef

__all__ = ["Remote", "RemoteRef", "SyncReport", "TransferOptions", "add_remote", "list_remotes", "open_remote",
           "pull", "push", "remove_remote", "sync"]
