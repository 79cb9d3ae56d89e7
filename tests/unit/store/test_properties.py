"""Property-based tests: what is written reads back identical; diff(a, b) applied to a gives b."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granary.config import Settings
from granary.store import open_store

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
row = st.fixed_dictionaries(
    {"id": st.text(max_size=12), "text": text, "n": st.one_of(st.none(), st.integers(-(2**40), 2**40))}
)
rows = st.lists(row, max_size=60)
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("n", pa.int64())])


_STORES: dict[str, object] = {}


def _store(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One store per test function; every example gets its own dataset (migrating a catalog costs ~0.3 s)."""
    import uuid

    key = str(tmp_path_factory.getbasetemp())
    if key not in _STORES:
        home: Path = tmp_path_factory.mktemp("g")
        _STORES[key] = open_store(Settings.from_env(home=home, shard_size_bytes=2048, row_group_bytes=1024))
    store = _STORES[key]
    name = f"p-{uuid.uuid4().hex[:12]}"
    store.create_dataset(name)  # type: ignore[attr-defined]
    return store, name


def _sorted(t: pa.Table) -> list[dict[str, object]]:
    return sorted(t.to_pylist(), key=lambda r: (r["id"], r["text"], r["n"] is None, r["n"] or 0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(rows, min_size=1, max_size=4))
def test_written_rows_read_back_identical(tmp_path_factory, batches: list[list[dict[str, object]]]) -> None:  # type: ignore[no-untyped-def]
    store, name = _store(tmp_path_factory)
    expected: list[dict[str, object]] = []
    for batch in batches:
        with store.transaction(name) as txn:
            txn.write(pa.Table.from_pylist(batch, schema=SCHEMA))
            txn.commit(allow_empty=True)
        expected.extend(batch)
    got = store.read_table(name)
    assert got.to_pylist() == expected  # same rows, same order
    assert store.verify(name).ok


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=rows, added=rows, drop_fraction=st.floats(0, 1), seed=st.integers(0, 1000))
def test_diff_applied_to_a_gives_b(tmp_path_factory, base, added, drop_fraction, seed) -> None:  # type: ignore[no-untyped-def]
    import random

    store, name = _store(tmp_path_factory)
    a = store.commit_table(name, pa.Table.from_pylist(base, schema=SCHEMA), allow_empty=True)
    rng = random.Random(seed)
    kept = [r for r in base if rng.random() >= drop_fraction]
    b = store.commit_table(name, pa.Table.from_pylist(kept + added, schema=SCHEMA), mode="overwrite", allow_empty=True)
    d = store.diff(a.ref, b.ref)
    applied = d.apply_to(store.read_table(a.ref))
    assert _sorted(applied) == _sorted(store.read_table(b.ref))
    assert d.num_rows_added - d.num_rows_removed == len(kept + added) - len(base)
