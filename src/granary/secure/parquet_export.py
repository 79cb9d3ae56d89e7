"""Exports with Parquet modular (column) encryption, keyed by the tenant's master key through the key provider.

The files follow the Apache Parquet encryption spec (AES-GCM, double envelope wrapping), so any Parquet
reader with access to a KMS that can unwrap the keys (here: Granary's key provider) can read them.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from granary.secure.keys import KeyProvider

if TYPE_CHECKING:
    from granary.secure.guard import Guard
    from granary.store import Store

_AAD = b"granary-parquet-export\0"


class ProviderKmsClient(pe.KmsClient):
    """Lets pyarrow wrap and unwrap Parquet key-encryption keys with a Granary key provider."""

    def __init__(self, provider: KeyProvider) -> None:
        pe.KmsClient.__init__(self)
        self.provider = provider

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        wrapped = self.provider.wrap(master_key_identifier, bytes(key_bytes), _AAD + master_key_identifier.encode())
        return base64.b64encode(wrapped).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return self.provider.unwrap(master_key_identifier, base64.b64decode(wrapped_key),
                                    _AAD + master_key_identifier.encode())


def _factory(provider: KeyProvider) -> tuple[pe.CryptoFactory, pe.KmsConnectionConfig]:
    return pe.CryptoFactory(lambda _config: ProviderKmsClient(provider)), pe.KmsConnectionConfig()


def write_encrypted_parquet(table: pa.Table, path: Path, *, provider: KeyProvider, tenant: str,
                            columns: list[str] | None = None, plaintext_footer: bool = False) -> dict[str, Any]:
    """Write ``table`` with ``columns`` (default: all) encrypted under the tenant's current master key."""
    key_id = provider.current_key_id(tenant)
    chosen = list(columns) if columns is not None else list(table.column_names)
    missing = sorted(set(chosen) - set(table.column_names))
    if missing:
        raise ValueError(f"cannot encrypt columns {missing}: the table has {table.column_names}")
    factory, kms = _factory(provider)
    config = pe.EncryptionConfiguration(
        footer_key=key_id, column_keys={key_id: chosen}, encryption_algorithm="AES_GCM_V1",
        plaintext_footer=plaintext_footer, double_wrapping=True, data_key_length_bits=256,
        cache_lifetime=dt.timedelta(minutes=5))
    props = factory.file_encryption_properties(kms, config)
    with pq.ParquetWriter(str(path), table.schema, encryption_properties=props, compression="zstd") as writer:
        writer.write_table(table)
    return {"path": str(path), "rows": table.num_rows, "encrypted_columns": chosen, "master_key_id": key_id}


def read_encrypted_parquet(path: Path, *, provider: KeyProvider, columns: list[str] | None = None) -> pa.Table:
    """Read a file written by :func:`write_encrypted_parquet` (needs the provider holding its master key)."""
    factory, kms = _factory(provider)
    props = factory.file_decryption_properties(kms, pe.DecryptionConfiguration(
        cache_lifetime=dt.timedelta(minutes=5)))
    return pq.ParquetFile(str(path), decryption_properties=props).read(columns=columns)


def export_encrypted(store: Store, guard: Guard, ref: str, path: Path, *, columns: list[str] | None = None,
                     purpose: str | None = None) -> dict[str, Any]:
    """Export a documents version to a column-encrypted Parquet file (authorized and audited as ``export``)."""
    version = store.resolve(ref)
    policy = guard.authorize("export", version.dataset, purpose=purpose, obj=f"{version.dataset}@{version.id}")
    table = store.read_table(version, purpose=purpose)
    info = write_encrypted_parquet(table, path, provider=guard.key_provider(), tenant=policy.tenant,
                                   columns=columns)
    guard.record("export", version.dataset, obj=f"{version.dataset}@{version.id}",
                 details={"format": "parquet-encrypted", "rows": info["rows"], "columns": info["encrypted_columns"]})
    return {**info, "version": version.id}
