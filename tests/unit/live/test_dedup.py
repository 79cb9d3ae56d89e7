"""The streaming dedup index: first occurrence kept, keys known only once committed, several key columns."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from granary.live.dedup import KeyIndex
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
