"""Fixtures for stream tests: small tokens and documents versions in an isolated store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from granary.config import Settings
from granary.store import Store, open_store


def write_tokens(store: Store, name: str, docs: list[np.ndarray], *, shard_tokens: int, dtype: str = "uint16") -> str:
    """Commit ``docs`` as a tokens dataset cut into shards of about ``shard_tokens``; return the version id."""
    store.create_dataset(name, kind="tokens")
    with store.transaction(name) as txn:
        txn.write_tokens(docs, dtype=dtype, shard_tokens=shard_tokens)
        return txn.commit(message="test tokens").id


def make_docs(count: int, *, seed: int, max_len: int = 300) -> list[np.ndarray]:
    """Documents whose tokens are unique (doc i holds i*1000 + 0..len), so every sample is recognisable."""
    rng = np.random.default_rng(seed)
    return [np.arange(i * 1000, i * 1000 + int(rng.integers(5, max_len)), dtype=np.uint32) % 65000
            for i in range(count)]


@pytest.fixture
def tstore(tmp_path: Path) -> Store:
    """An empty store in a temporary home."""
    return open_store(Settings.from_env(home=tmp_path / "home"))


@pytest.fixture
def tokens_store(tstore: Store) -> tuple[Store, np.ndarray]:
    """A store with dataset ``toks`` (6 shards, shard boundaries inside samples) and its flat token array."""
    docs = make_docs(40, seed=0)
    write_tokens(tstore, "toks", docs, shard_tokens=1000)
    return tstore, np.concatenate(docs).astype(np.uint16)


@pytest.fixture
def docs_store(tstore: Store) -> Store:
    """A store with a documents dataset ``docs`` of 50 records in 3 shards."""
    tstore.create_dataset("docs", kind="documents")
    with tstore.transaction("docs") as txn:
        for part in range(3):
            ids = [f"d{part}-{i}" for i in range(part * 20, part * 20 + (20 if part < 2 else 10))]
            txn.write(pa.table({"id": ids, "text": [f"text of {i}" for i in ids]}))
        txn.commit(message="docs")
    return tstore
