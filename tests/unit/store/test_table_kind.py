"""The `table` dataset kind and catalog writes committed atomically with a version."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from granary.errors import StoreError
from granary.live.offsets import advance, read_offset


def test_table_round_trips_any_schema(any_store) -> None:  # type: ignore[no-untyped-def]
    any_store.create_dataset("t", kind="table")
    table = pa.table({"k": pa.array(range(5000), pa.int64()), "x": [float(i) / 3 for i in range(5000)],
                      "tag": pa.array([f"t{i % 7}" for i in range(5000)], pa.large_string())})
    v1 = any_store.commit_table("t", table, message="first")
    assert v1.kind == "table" and v1.num_rows == 5000
    back = any_store.read_table("t")
    assert back.column("k").to_pylist() == list(range(5000))
    assert back.schema.field("tag").type == pa.string()  # large strings narrowed
    assert any_store.manifest("t").schema is not None
    v2 = any_store.commit_table("t", table.slice(0, 10))
    assert any_store.read_table("t").num_rows == 5010 and v2.parents == [v1.id]


def test_table_rejects_bad_rows(store) -> None:  # type: ignore[no-untyped-def]
    store.create_dataset("t", kind="table")
    store.commit_table("t", pa.table({"a": [1, 2]}))
    with pytest.raises(StoreError, match="missing \\['a'\\]"):
        store.commit_table("t", pa.table({"b": [1]}))
    with pytest.raises(StoreError, match="tokens"), store.transaction("t") as txn:
        txn.write_tokens([])


def test_delete_where_on_a_table(store) -> None:  # type: ignore[no-untyped-def]
    store.create_dataset("t", kind="table")
    store.commit_table("t", pa.table({"a": list(range(100))}))
    with store.transaction("t") as txn:
        txn.delete_where("a < 40")
        txn.commit()
    assert sorted(store.read_table("t").column("a").to_pylist()) == list(range(40, 100))


def test_catalog_write_commits_with_the_version(any_store) -> None:  # type: ignore[no-untyped-def]
    any_store.create_dataset("t", kind="table")
    with any_store.transaction("t") as txn:
        txn.write(pa.table({"a": [1]}))
        txn.add_catalog_write(lambda conn, v: advance(conn, source="s", dataset="t", branch="main", expected=None,
                                                      position="7", records=1, version_id=v.id))
        version = txn.commit()
    off = read_offset(any_store.catalog, "s", "t", "main")
    assert off is not None and off.position == "7" and off.version_id == version.id and off.records == 1


def test_failing_catalog_write_rolls_back_the_commit(any_store) -> None:  # type: ignore[no-untyped-def]
    any_store.create_dataset("t", kind="table")
    head = any_store.commit_table("t", pa.table({"a": [1]}))

    def boom(conn: sa.engine.Connection, version: object) -> None:
        advance(conn, source="s", dataset="t", branch="main", expected=None, position="1", records=1,
                version_id=None)
        raise RuntimeError("crash inside the catalog transaction")

    with any_store.transaction("t") as txn:
        txn.write(pa.table({"a": [2]}))
        txn.add_catalog_write(boom)
        with pytest.raises(RuntimeError):
            txn.commit()
    assert any_store.resolve("t").id == head.id  # the branch did not move
    assert read_offset(any_store.catalog, "s", "t", "main") is None  # and the offset was not written
    assert any_store.read_table("t").column("a").to_pylist() == [1]
