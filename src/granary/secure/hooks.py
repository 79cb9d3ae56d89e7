"""The store hooks of the security layer: authorization, audit, policy propagation and shard encryption.

Installed by :func:`granary.store.open_store` when ``GRANARY_SECURE=1`` (implied by ``GRANARY_AUTH=tokens``
or ``GRANARY_ENCRYPT=1``), or explicitly: ``Store(settings, hooks=SecureHooks.from_settings(settings))``.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import IO, Any

from granary.catalog import Catalog, open_catalog
from granary.config import Settings
from granary.secure.crypto import HEADER_BYTES, ChunkLayout, DecryptingReader, encrypt_stream, new_header
from granary.secure.errors import CryptoError, KeyMissingError
from granary.secure.guard import Guard
from granary.secure.settings import SecureSettings
from granary.secure.tokens import Principal

log = logging.getLogger(__name__)

ALGORITHM = "aes-256-gcm-chunked"
PARQUET_CHUNK_BYTES = 1 << 20
_TOKEN_HEADER = struct.Struct("<8sHHI")
_TOKEN_ITEMSIZE = {1: 2, 2: 4}


def layout_for(src: Path, fmt: str) -> ChunkLayout:
    """Chunking for a shard file: one chunk per token block (after the 64-byte header), else 1 MiB chunks."""
    if fmt != "tokens":
        return ChunkLayout(chunk_bytes=PARQUET_CHUNK_BYTES)
    with open(src, "rb") as fh:
        magic, _version, dtype_code, block_tokens = _TOKEN_HEADER.unpack(fh.read(_TOKEN_HEADER.size))
    if magic != b"GRNTOK01" or dtype_code not in _TOKEN_ITEMSIZE:
        raise CryptoError(f"{src} is not a token shard (magic {magic!r}, dtype code {dtype_code})", where=str(src))
    return ChunkLayout(head_bytes=64, chunk_bytes=block_tokens * _TOKEN_ITEMSIZE[dtype_code])


class _AuditedReader(DecryptingReader):
    """A decrypting reader that audits authentication failures before raising them."""

    hooks: SecureHooks
    dataset: str

    def _decrypt_chunk(self, index: int, size: int, out: memoryview) -> None:
        try:
            super()._decrypt_chunk(index, size, out)
        except CryptoError as exc:
            self.hooks.guard.record("decrypt", self.dataset, obj=self.header.shard_id.hex(), outcome="error",
                                    details={"chunk": index, "reason": str(exc)})
            raise


class SecureHooks:
    """Implements :class:`granary.store.hooks.StoreHooks` over a :class:`Guard`.

    Args:
        guard: the guard (principal, roles, policies, audit, keys).
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.reads: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, *, principal: Principal | None = None, catalog: Catalog | None = None,
                      **overrides: Any) -> SecureHooks:
        """Build the hooks from store settings plus security settings read from the environment."""
        secure = SecureSettings.from_env(settings.home, **overrides)
        return cls(Guard(catalog or open_catalog(settings.catalog_url), secure, principal=principal))

    def bind(self, *, principal: str | Principal | None = None, token: str | None = None) -> SecureHooks:
        """Hooks acting for another principal (see :meth:`granary.store.Store.bind`); a bad token is refused
        and audited here, before any data is touched."""
        return SecureHooks(self.guard.bound(principal=principal, token=token))

    def authorize(self, action: str, dataset: str, *, purpose: str | None = None) -> None:
        self.guard.authorize(action, dataset, purpose=purpose)

    def derive(self, store: Any, target: str, sources: list[str]) -> None:
        """Derived data inherits the union of its sources' restrictions (audited as policy.propagate)."""
        self.guard.propagate(target, sources)

    def authorize_object(self, action: str, dataset: str, obj: str, *, purpose: str | None = None) -> None:
        """Like :meth:`authorize`, naming the object asked for in a refusal's audit record."""
        self.guard.authorize(action, dataset, purpose=purpose, obj=obj)

    def allows(self, action: str, dataset: str) -> bool:
        """Whether the principal may do ``action`` on ``dataset`` (no audit record: for filtering listings)."""
        return self.guard.allows(action, dataset)

    def record(self, action: str, dataset: str, *, version: str | None = None, outcome: str = "ok",
               details: dict[str, Any] | None = None) -> None:
        obj = f"{dataset}@{version}" if version else dataset
        self.guard.record(action, dataset, obj=obj, outcome=outcome, details=details)
        if outcome != "ok" or dataset == "*":
            return
        if action == "read":
            self.reads.add(dataset)
        elif action == "write" and self.reads - {dataset}:
            # tags propagate through pipelines: what this process read flows into what it writes
            self.guard.propagate(dataset, sorted(self.reads - {dataset}))

    def encrypts(self, dataset: str) -> bool:
        return self.guard.settings.encrypt or self.guard.policies.get(dataset).encrypt

    def encrypt_file(self, dataset: str, src: Path, dst: Path, *, fmt: str) -> dict[str, Any]:
        tenant = self.guard.policies.get(dataset).tenant
        layout = layout_for(src, fmt)
        key_ref, dek = self.guard.keys.create(dataset, tenant)
        size = src.stat().st_size
        header = new_header(size, layout=layout, shard_id=bytes.fromhex(key_ref))
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            encrypt_stream(fin, fout, dek=dek, header=header, context=dataset.encode())
        return {"alg": ALGORITHM, "v": 1, "key_ref": key_ref, "dataset": dataset, "plain_bytes": size,
                "chunk_bytes": layout.chunk_bytes, "head_bytes": layout.head_bytes, "header_bytes": HEADER_BYTES}

    def open_decrypted(self, meta: dict[str, Any], raw: IO[bytes], *, key: str) -> IO[bytes]:
        dataset = str(meta.get("dataset", ""))
        if meta.get("alg") != ALGORITHM or not key.startswith(f"datasets/{dataset}/"):
            raw.close()
            raise CryptoError(f"object {key} has unknown or mismatched encryption metadata "
                              f"(alg {meta.get('alg')!r}, dataset {dataset!r})", where=key)
        try:
            # no data key without read permission, even for callers that open shards directly
            self.guard.authorize_key(dataset, key)
        except Exception:
            raw.close()
            raise
        try:
            dek = self.guard.keys.get(str(meta["key_ref"]))
        except KeyMissingError as exc:
            raw.close()
            self.guard.record("decrypt", dataset, obj=key, outcome="denied", details={"reason": str(exc)})
            raise
        try:
            reader = _AuditedReader(raw, dek=dek, context=dataset.encode(), where=key,  # type: ignore[arg-type]
                                    expected_shard_id=bytes.fromhex(str(meta["key_ref"])))
        except CryptoError as exc:
            raw.close()
            self.guard.record("decrypt", dataset, obj=key, outcome="error", details={"reason": str(exc)})
            raise
        reader.hooks = self
        reader.dataset = dataset
        return reader  # type: ignore[return-value]

    def prepare_gc(self, store: Any, *, dry_run: bool = False) -> dict[str, Any]:
        """Apply retention policies and finish forget requests before gc collects (see retention)."""
        from granary.secure.retention import apply_retention

        return apply_retention(store, self.guard, dry_run=dry_run).to_dict()
