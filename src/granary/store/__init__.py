"""The dataset store: versioned, immutable, content-addressed datasets over a catalog and object storage."""

from __future__ import annotations

from granary.store.manifest import Manifest, ShardEntry
from granary.store.model import DatasetInfo, RefInfo, VersionInfo
from granary.store.store import Store, open_store
from granary.store.transaction import Transaction

__all__ = [
    "DatasetInfo",
    "Manifest",
    "RefInfo",
    "ShardEntry",
    "Store",
    "Transaction",
    "VersionInfo",
    "open_store",
]
