"""Manifest segments: the vectorised canonical form hashes exactly like the per-entry reference."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.errors import IntegrityError
from granary.store.manifest import ShardEntry, _canonical_lines, canonical_json, decode_segment, encode_segment

_text = st.text(st.characters(codec="utf-8"), max_size=30)
_meta = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-10**12, 10**12), st.text(max_size=10),
                                                        st.booleans(), st.none()), max_size=4)
_entry = st.builds(ShardEntry, key=_text, rows=st.integers(0, 2**40), bytes=st.integers(0, 2**40), checksum=_text,
                   format=st.sampled_from(["parquet", "tokens", "table"]),
                   tokens=st.one_of(st.none(), st.integers(0, 2**40)), meta=_meta)


@given(st.lists(_entry, max_size=40))
@settings(max_examples=150, deadline=None)
def test_segments_round_trip_and_the_fast_hash_matches_the_reference(entries: list[ShardEntry]) -> None:
    sha, data = encode_segment(entries)
    assert decode_segment(data, key="k", expected_sha256=sha) == entries
    fast = _canonical_lines(pq.ParquetFile(io.BytesIO(data)).read())
    if fast is not None:  # None: some string needs JSON escaping, and the reference path is taken
        assert fast == b"\n".join(canonical_json(e.canonical()) for e in entries)


def test_a_tampered_entry_fails_the_check() -> None:
    entries = [ShardEntry(key=f"k{i}", rows=i, bytes=i, checksum="c", format="parquet", meta={"n": i})
               for i in range(5)]
    sha, _ = encode_segment(entries)
    _, other = encode_segment([*entries[:4], ShardEntry(key="k4", rows=5, bytes=4, checksum="c", format="parquet",
                                                        meta={"n": 4})])
    with pytest.raises(IntegrityError, match="does not match its hash"):
        decode_segment(other, key="seg", expected_sha256=sha)
