"""Decoding micro-batches into Arrow, and parsing source URLs, durations and schemas (no servers needed)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.live.decode import decode
from granary.live.errors import SourceError
from granary.live.registry import open_source, parse_duration, parse_schema


def positions(n: int) -> pa.Array:
    return pa.array([str(i) for i in range(n)], pa.string())


def test_json_bodies_become_columns_with_positions() -> None:
    d = decode([b'{"a": 1, "b": "x"}', b'{"a": 2, "b": "y"}'], positions(2), fmt="json", schema=None)
    assert d.quarantine is None
    assert d.table.to_pydict() == {"a": [1, 2], "b": ["x", "y"], "_position": ["0", "1"]}


def test_bad_bodies_are_quarantined_with_reason_and_raw_bytes() -> None:
    bodies = [b'{"a": 1}', b"[1, 2]", b"\xff", b'{"a": 2}', b'{"a":\n 3}']
    d = decode(bodies, positions(5), fmt="json", schema=None)
    assert d.table.column("a").to_pylist() == [1, 2, 3]
    assert d.table.column("_position").to_pylist() == ["0", "3", "4"]
    q = d.quarantine.to_pydict()
    assert q["position"] == ["1", "2"] and q["raw"] == [b"[1, 2]", b"\xff"]
    assert q["reason"][0].startswith("not a JSON object") and q["reason"][1].startswith("not JSON")


def test_explicit_schema_quarantines_values_that_do_not_fit() -> None:
    schema = pa.schema([("n", pa.int64())])
    d = decode([b'{"n": 1, "extra": true}', b'{"n": "x"}'], positions(2), fmt="json", schema=schema)
    assert d.table.column("n").to_pylist() == [1] and d.table.column_names == ["n", "_position"]
    assert "does not fit" in d.quarantine.column("reason")[0].as_py()


def test_raw_bodies_are_kept_as_bytes() -> None:
    d = decode([b"\x00\x01", b""], positions(2), fmt="raw", schema=None)
    assert d.table.column("payload").to_pylist() == [b"\x00\x01", b""]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from("abc"), st.integers(-5, 5), min_size=1),
                          st.binary(max_size=8)), max_size=30))
def test_every_message_is_either_a_row_or_quarantined(items: list[object]) -> None:
    bodies = [json.dumps(i).encode() if isinstance(i, dict) else i for i in items]
    d = decode(bodies, positions(len(bodies)), fmt="json", schema=pa.schema([("a", pa.int64())]))
    rows = [] if d.table is None else d.table.column("_position").to_pylist()
    bad = [] if d.quarantine is None else d.quarantine.column("position").to_pylist()
    assert sorted(rows + bad, key=int) == [str(i) for i in range(len(bodies))]
    assert not set(rows) & set(bad)


def test_durations_and_schemas() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("30s") == 30 and parse_duration("2m") == 120
    assert parse_duration("1.5") == 1.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    assert parse_schema("n:int64, name:string,ts:timestamp") == pa.schema(
        [("n", pa.int64()), ("name", pa.string()), ("ts", pa.timestamp("ms"))])
    with pytest.raises(ValueError, match="NAME:TYPE"):
        parse_schema("n:integer")


def test_source_urls_say_what_is_missing() -> None:
    with pytest.raises(SourceError, match="unknown source scheme"):
        open_source("mqtt://127.0.0.1?topic=x")
    with pytest.raises(SourceError, match="names no stream"):
        open_source("redis://127.0.0.1:6379/0")
    with pytest.raises(SourceError, match="names no queue"):
        open_source("amqp://guest:guest@127.0.0.1:5672/%2F")
    src = open_source("redis://127.0.0.1:6379/2?stream=s&group=g")
    assert src.url == "redis://127.0.0.1:6379/2#s/g"
