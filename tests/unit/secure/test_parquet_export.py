"""Parquet modular encryption for exports, keyed through the key provider."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from granary.secure.keys import LocalKeyring
from granary.secure.parquet_export import read_encrypted_parquet, write_encrypted_parquet


def test_column_encryption_round_trip(tmp_path: Path) -> None:
    ring = LocalKeyring(tmp_path / "keyring.json")
    table = pa.table({"id": ["1", "2"], "text": ["alice@example.com wrote", "bob wrote"], "lang": ["en", "en"]})
    out = tmp_path / "export.parquet"
    info = write_encrypted_parquet(table, out, provider=ring, tenant="default", columns=["text"],
                                   plaintext_footer=True)
    assert info["encrypted_columns"] == ["text"]
    assert b"alice@example.com" not in out.read_bytes()
    assert read_encrypted_parquet(out, provider=ring).equals(table)
    # without keys: the plaintext columns are readable, the encrypted one is not
    assert pq.read_table(out, columns=["lang"]).column("lang").to_pylist() == ["en", "en"]
    with pytest.raises(OSError):
        pq.read_table(out, columns=["text"])
    other = LocalKeyring(tmp_path / "other.json")
    with pytest.raises(Exception, match="default-1"):
        read_encrypted_parquet(out, provider=other)
    with pytest.raises(ValueError, match="nope"):
        write_encrypted_parquet(table, out, provider=ring, tenant="default", columns=["nope"])
