"""The read gate: the one authorisation and audit point on the store's read path.

Every public read entry point of :class:`granary.store.Store` (metadata such as ``dataset``/``refs``/``log``/
``manifest``, and data such as ``read_shard``/``read_table``/``iter_batches``/``object_bytes``/``local_path``)
calls the gate of the store view it was called on, plaintext or encrypted, whatever the mode. The gate asks the
store's hooks whether the view's principal may do the action (with the view's declared purpose for data reads)
and writes one audit record for each permitted action; refusals are audited by the hooks before they raise.

Decisions are remembered for :data:`GRANT_TTL_S` seconds per (action, dataset, version, purpose), so a loader
that opens a version once and then reads thousands of shards or batches is authorised and audited once per
version, not once per batch; a revoked role or token stops working within that time in long-running readers.
Shard-level reads (``read_shard``, ``open_object``, ``local_path``) are allowed without a new decision when a
data read of the shard's dataset was authorised in the same view within that time (``open_version`` first),
else they are authorised (and audited) as a read of the dataset for the view's purpose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from granary.errors import AuthorizationError, StoreError
from granary.store.hooks import StoreHooks

GRANT_TTL_S = 60.0
DATA_ACTIONS = frozenset({"read", "export"})
METADATA_ACTION = "list"


def dataset_of_key(key: str) -> str:
    """The dataset an object key belongs to (``datasets/<name>/...``)."""
    parts = key.split("/", 2)
    if len(parts) < 3 or parts[0] != "datasets" or not parts[1]:
        raise StoreError(f"object {key!r} is not a dataset object", hint="pass a ShardEntry from a manifest")
    return parts[1]


class ReadGate:
    """Authorises and audits the reads of one store view.

    Args:
        hooks: the store's hooks (authorisation and audit).
        purpose: the purpose the view declares for data reads (None: the hooks' default, e.g. GRANARY_PURPOSE).
    """

    def __init__(self, hooks: StoreHooks, *, purpose: str | None = None) -> None:
        self.hooks = hooks
        self.purpose = purpose
        self._granted: dict[tuple[str, str, str | None, str | None], float] = {}
        self._data: dict[str, float] = {}  # dataset -> when a data read of it was last authorised
        self._lock = threading.Lock()

    def allow(self, action: str, dataset: str, *, version: str | None = None, purpose: str | None = None,
              details: dict[str, Any] | None = None, obj: str = "") -> None:
        """Authorise ``action`` on ``dataset`` (raises, audited, if refused) and audit it once per TTL."""
        purpose = purpose or self.purpose
        key = (action, dataset, version, purpose)
        now = time.monotonic()
        at = self._granted.get(key)
        if at is not None and now - at < GRANT_TTL_S:
            return
        by_object = getattr(self.hooks, "authorize_object", None)
        if obj and by_object is not None:  # the refusal names the object asked for
            by_object(action, dataset, obj, purpose=purpose)
        else:
            self.hooks.authorize(action, dataset, purpose=purpose)
        extra = dict(details or {})
        if purpose:
            extra["purpose"] = purpose
        self.hooks.record(action, dataset, version=version, details=extra or None)
        with self._lock:
            self._granted[key] = now
            if action in DATA_ACTIONS:
                self._data[dataset] = now

    def shard(self, key: str) -> None:
        """Allow reading the object ``key``: free after a data read of its dataset was authorised here."""
        dataset = dataset_of_key(key)
        at = self._data.get(dataset)  # a dict read is atomic: no lock on the loader's path
        if at is not None and time.monotonic() - at < GRANT_TTL_S:
            return
        self.allow("read", dataset, details={"object": key}, obj=key)

    def visible(self, datasets: Iterable[str]) -> set[str]:
        """The datasets (of ``datasets``) the view may list; the listing itself is audited once per TTL."""
        names = list(datasets)
        allows = getattr(self.hooks, "allows", None)
        out: set[str] = set()
        for name in names:
            if allows is not None:
                if allows(METADATA_ACTION, name):
                    out.add(name)
                continue
            try:  # hooks without a silent check: ask, and keep what is allowed
                self.hooks.authorize(METADATA_ACTION, name)
            except AuthorizationError:
                continue
            out.add(name)
        key = (METADATA_ACTION, "*", None, None)
        now = time.monotonic()
        with self._lock:
            at = self._granted.get(key)
        if at is None or now - at >= GRANT_TTL_S:
            self.hooks.record(METADATA_ACTION, "*", details={"datasets": len(out), "hidden": len(names) - len(out)})
            with self._lock:
                self._granted[key] = now
        return out

    def forget_grants(self) -> None:
        """Drop remembered decisions (after a role, policy or token change in this process)."""
        with self._lock:
            self._granted.clear()
            self._data.clear()
