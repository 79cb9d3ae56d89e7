"""The streaming dedup index: first occurrence kept, keys known only once committed, several key columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from granary.live.dedup import KeyIndex, hash_strings
from granary.live.errors import LiveError


@given(batches=st.lists(st.lists(st.integers(0, 30), max_size=40), max_size=6))
def test_committed_keys_are_each_kept_exactly_once_in_first_seen_order(batches: list[list[int]]) -> None:
    index = KeyIndex(("k",))
    kept: list[int] = []
    for batch in batches:
        out, dropped = index.filter(pa.table({"k": pa.array(batch, pa.int64())}), where="test")
        index.commit()
        assert dropped == len(batch) - out.num_rows
        kept += out.column("k").to_pylist()
    seen: list[int] = []
    for k in (k for b in batches for k in b):
        if k not in seen:
            seen.append(k)
    assert kept == seen


def test_an_uncommitted_batch_leaves_the_index_unchanged_and_keys_can_span_columns() -> None:
    index = KeyIndex(("site", "n"))
    batch = pa.table({"site": ["a", "a", "b", None], "n": [1, 1, 1, 1]})
    out, dropped = index.filter(batch, where="test")
    assert (out.num_rows, dropped) == (3, 1)
    again, _ = index.filter(batch, where="test")  # the first batch's commit failed: nothing was learned
    assert again.num_rows == 3
    index.commit()
    assert index.filter(batch, where="test")[0].num_rows == 0 and index.size == 3
    with pytest.raises(LiveError, match=r"dedup key column\(s\) \['n'\]"):
        index.filter(pa.table({"site": ["a"]}), where="stream s through 5")


def _replay(index: KeyIndex, batches: list[list[str | None]]) -> list[str | None]:
    kept: list[str | None] = []
    for batch in batches:
        out, _ = index.filter(pa.table({"k": pa.array(batch, pa.string())}), where="test")
        index.commit()
        kept += out.column("k").to_pylist()
    return kept


def _first_seen(batches: list[list[str | None]]) -> list[str | None]:
    seen: list[str | None] = []
    for k in (("" if k is None else k) for b in batches for k in b):  # a null string key is the empty key
        if k not in seen:
            seen.append(k)
    return seen


@given(batches=st.lists(st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=30), max_size=8))
def test_string_keys_across_many_runs_are_each_kept_once(batches: list[list[str | None]]) -> None:
    kept = _replay(KeyIndex(("k",)), batches)
    assert [("" if k is None else k) for k in kept] == _first_seen(batches)


def test_hash_collisions_never_drop_a_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # every key hashes alike: only the exact key check can tell them apart
    monkeypatch.setattr("granary.live.dedup.hash_strings", lambda arr: np.zeros(len(arr), dtype=np.uint64))
    batches = [["a", "b"], ["b", "c", "a"], ["d"], ["c", "e", "d", "f"]]
    index = KeyIndex(("k",))
    assert _replay(index, batches) == ["a", "b", "c", "d", "e", "f"] and index.size == 6


def test_the_string_hash_is_the_same_for_slices_and_differs_across_keys() -> None:
    words = pa.array(["", "a", "ab", "ba", "x" * 5000, "ünï", "a\x1fb"])
    codes = hash_strings(words)
    assert len(set(codes.tolist())) == len(words)
    assert hash_strings(words.slice(2, 3)).tolist() == codes[2:5].tolist()


def test_integer_keys_with_nulls_and_a_million_known_keys() -> None:
    index = KeyIndex(("k",))
    index._add(pa.array(np.arange(0, 2_000_000, 2, dtype=np.int64)))  # 1M even keys, as load() would
    out, dropped = index.filter(pa.table({"k": pa.array([4, 5, None, 5, None, 1_999_998, 2_000_001])}), where="t")
    assert out.column("k").to_pylist() == [5, None, 2_000_001] and dropped == 4
    index.commit()
    assert index.size == 1_000_003
    assert index.filter(pa.table({"k": pa.array([None, 7, 5])}), where="t")[0].column("k").to_pylist() == [7]
