"""The series store on SQLite and on PostgreSQL: write, read back by labels and time, prune."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.catalog import open_catalog
from granary.monitor.series import SeriesStore, label_key


def _exercise(store: SeriesStore) -> None:
    store.write([("granary_node_load1", (), 1.5), ("granary_gpu_up", (("gpu", "0"),), 1.0)], ts=10.0,
                extra={"node": "a"})
    store.write([("granary_node_load1", (), 2.5)], ts=20.0, extra={"node": "a"})
    store.write([("granary_node_load1", (), 9.0)], ts=20.0, extra={"node": "b"})
    (a,) = store.read("granary_node_load1", match={"node": "a"})
    assert a.ts.tolist() == [10.0, 20.0] and a.values.tolist() == [1.5, 2.5]
    assert len(store.read("granary_node_load1")) == 2
    assert [s.values.tolist() for s in store.read("granary_node_load1", since=15.0)] == [[2.5], [9.0]]
    assert store.names() == ["granary_gpu_up", "granary_node_load1"]
    assert store.prune(15.0) == 2
    assert store.read("granary_gpu_up") == []


def test_series_on_sqlite(tmp_path: Path) -> None:
    _exercise(SeriesStore(open_catalog(f"sqlite:///{tmp_path / 'c.db'}")))


@pytest.mark.postgres
def test_series_on_postgres(pg_url: str) -> None:
    from tests.conftest import fresh_pg_database

    _exercise(SeriesStore(open_catalog(fresh_pg_database(pg_url))))


def test_two_writers_share_series_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    one, two = SeriesStore(open_catalog(url)), SeriesStore(open_catalog(url))
    one.write([("granary_node_load1", (), 1.0)], ts=1.0, extra={"node": "a"})
    two.write([("granary_node_load1", (), 2.0)], ts=2.0, extra={"node": "a"})
    (s,) = one.read("granary_node_load1")
    assert s.values.tolist() == [1.0, 2.0]


@settings(deadline=None, max_examples=50)
@given(st.dictionaries(st.sampled_from(["node", "gpu", "rank", "job"]), st.text(min_size=1, max_size=8)))
def test_label_key_is_order_free(labels: dict[str, str]) -> None:
    assert label_key(labels) == label_key(list(reversed(list(labels.items()))))
