"""Data keys in the catalog: one fresh key per encrypted object, wrapped by a tenant master key.

Rotation re-wraps every data key under a new master key without touching the objects; crypto-shredding
deletes the wrapped key, so the object's ciphertext (and every copy or backup of it) becomes noise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.secure import tables as t
from granary.secure.crypto import KEY_BYTES
from granary.secure.errors import KeyMissingError, ShreddedKeyError
from granary.secure.keys import KeyProvider, check_tenant

log = logging.getLogger(__name__)

_ROTATE_BATCH = 500


@dataclass(kw_only=True, frozen=True)
class RotationReport:
    """What a key rotation did.

    Attributes:
        tenant: the tenant whose master key rotated.
        new_key_id: the new current master key.
        rewrapped: data keys re-wrapped under it.
        retired: old master keys destroyed afterwards.
    """

    tenant: str
    new_key_id: str
    rewrapped: int
    retired: tuple[str, ...]


def _aad(key_ref: str, dataset: str) -> bytes:
    return b"granary-dek\0" + key_ref.encode() + b"\0" + dataset.encode()


class DataKeyStore:
    """Creates, unwraps (with a short in-process cache), rotates and shreds data keys.

    Args:
        catalog: the catalog holding ``secure_data_keys``.
        provider: the master-key provider.
    """

    def __init__(self, catalog: Catalog, provider: KeyProvider) -> None:
        self.catalog = catalog
        self.provider = provider
        self._cache: dict[str, tuple[str, bytes]] = {}  # key_ref -> (master key id, data key)
        self._checked: set[str] = set()

    def check_provider(self, tenant: str) -> None:
        """Refuse to go on when the catalog holds live data keys wrapped under master keys the provider lacks
        (a lost or replaced keyring): creating a new master key then would hide the loss until old data is read."""
        if tenant in self._checked:
            return
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.data_keys.c.master_key_id, sa.func.count()).where(
                t.data_keys.c.tenant == tenant, t.data_keys.c.shredded_at.is_(None))
                .group_by(t.data_keys.c.master_key_id)).all()
        missing = {str(r[0]): int(r[1]) for r in rows if not self.provider.holds(str(r[0]))}
        if missing:
            where = getattr(self.provider, "path", None)
            raise KeyMissingError(
                f"the {self.provider.name} key provider{f' (keyring {where})' if where else ''} lacks master "
                f"key(s) {sorted(missing)} that wrap {sum(missing.values())} data key(s) of tenant {tenant} in "
                "this catalog; nothing was written",
                hint="restore the keyring from its backup (or point GRANARY_KEYRING / GRANARY_KEY_PROVIDER at the "
                     "one that holds these keys); never start a new keyring for a store with encrypted data")
        self._checked.add(tenant)

    def create(self, dataset: str, tenant: str) -> tuple[str, bytes]:
        """A fresh data key for a new object of ``dataset``: returns (key_ref, key)."""
        check_tenant(tenant)
        self.check_provider(tenant)
        dek = os.urandom(KEY_BYTES)
        key_ref = os.urandom(16).hex()
        key_id = self.provider.current_key_id(tenant)
        wrapped = self.provider.wrap(key_id, dek, _aad(key_ref, dataset))
        with self.catalog.write() as conn:
            conn.execute(t.data_keys.insert().values(
                key_ref=key_ref, dataset=dataset, tenant=tenant, master_key_id=key_id, wrapped=wrapped,
                created_at=time.time(), shredded_at=None))
        self._cache[key_ref] = (key_id, dek)
        return key_ref, dek

    def get(self, key_ref: str) -> bytes:
        """The data key for ``key_ref``; raises ShreddedKeyError once it was destroyed.

        The catalog row is checked on every call (one primary-key lookup per shard opened), so a key shredded
        by another process stops working here at once; only the unwrapping is cached.
        """
        with self.catalog.read() as conn:
            row = conn.execute(sa.select(t.data_keys).where(t.data_keys.c.key_ref == key_ref)).first()
        if row is None:
            raise KeyMissingError(f"no data key {key_ref} in the catalog",
                                  hint="the object was encrypted against another catalog; point "
                                  "GRANARY_CATALOG_URL at it")
        if row.shredded_at is not None or row.wrapped is None:
            self._cache.pop(key_ref, None)
            raise ShreddedKeyError(key_ref, row.shredded_at or 0.0)
        hit = self._cache.get(key_ref)
        if hit is not None and hit[0] == row.master_key_id:
            return hit[1]
        dek = self.provider.unwrap(row.master_key_id, bytes(row.wrapped), _aad(key_ref, row.dataset))
        self._cache[key_ref] = (row.master_key_id, dek)
        return dek

    def rotate(self, tenant: str, *, retire_old: bool = False) -> RotationReport:
        """Make a new master key current for ``tenant`` and re-wrap all its live data keys under it."""
        new_id = self.provider.new_master_key(check_tenant(tenant))
        rewrapped = 0
        old_ids: set[str] = set()
        while True:
            with self.catalog.write() as conn:
                rows = conn.execute(
                    sa.select(t.data_keys.c.key_ref, t.data_keys.c.dataset, t.data_keys.c.master_key_id,
                              t.data_keys.c.wrapped)
                    .where(t.data_keys.c.tenant == tenant, t.data_keys.c.master_key_id != new_id,
                           t.data_keys.c.shredded_at.is_(None))
                    .limit(_ROTATE_BATCH)).all()
                for row in rows:
                    aad = _aad(row.key_ref, row.dataset)
                    dek = self.provider.unwrap(row.master_key_id, bytes(row.wrapped), aad)
                    conn.execute(t.data_keys.update().where(t.data_keys.c.key_ref == row.key_ref).values(
                        master_key_id=new_id, wrapped=self.provider.wrap(new_id, dek, aad)))
                    old_ids.add(row.master_key_id)
            rewrapped += len(rows)
            if len(rows) < _ROTATE_BATCH:
                break
        retired: list[str] = []
        if retire_old:
            for key_id in sorted(old_ids - {new_id}):
                self.provider.retire(key_id)
                retired.append(key_id)
        log.info("rotated tenant %s to %s: %d data keys re-wrapped", tenant, new_id, rewrapped)
        return RotationReport(tenant=tenant, new_key_id=new_id, rewrapped=rewrapped, retired=tuple(retired))

    def shred(self, key_refs: Iterable[str]) -> int:
        """Destroy data keys for good; returns how many were live. Their objects can never be decrypted again."""
        refs = sorted(set(key_refs))
        if not refs:
            return 0
        now = time.time()
        with self.catalog.write() as conn:
            if self.catalog.is_sqlite:
                conn.exec_driver_sql("PRAGMA secure_delete=ON")  # overwrite the freed key bytes on disk
            done = 0
            for i in range(0, len(refs), 500):
                part = refs[i:i + 500]
                done += conn.execute(
                    t.data_keys.update()
                    .where(t.data_keys.c.key_ref.in_(part), t.data_keys.c.shredded_at.is_(None))
                    .values(wrapped=None, shredded_at=now)).rowcount
        for ref in refs:
            self._cache.pop(ref, None)
        log.info("crypto-shredded %d data keys", done)
        return done

    def refs(self, dataset: str, *, live_only: bool = True) -> list[str]:
        """Key refs of ``dataset`` (live ones unless ``live_only`` is False)."""
        query = sa.select(t.data_keys.c.key_ref).where(t.data_keys.c.dataset == dataset)
        if live_only:
            query = query.where(t.data_keys.c.shredded_at.is_(None))
        with self.catalog.read() as conn:
            return [r.key_ref for r in conn.execute(query)]
