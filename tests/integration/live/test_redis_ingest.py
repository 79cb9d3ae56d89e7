"""Redis Streams into versions, exactly once, against the real server on 127.0.0.1:6379."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from granary.live import IngestConfig, StreamIngester, read_offset
from granary.live.redis import RedisStreamSource
from tests.integration.live.conftest import reachable
from tests.integration.live.exactly_once import kill_and_resume

redis = pytest.importorskip("redis", reason="redis-py is needed (pip install 'granary[live]')")
pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not reachable(6379), reason="no Redis server on 127.0.0.1:6379 (.ci/run starts one)")]
URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def client(name: str):  # type: ignore[no-untyped-def]
    c = redis.Redis.from_url(URL)
    yield c
    c.delete(name)
    c.close()


def produce(client, stream: str, start: int, stop: int) -> None:  # type: ignore[no-untyped-def]
    pipe = client.pipeline(transaction=False)
    for i in range(start, stop):
        pipe.xadd(stream, {"data": json.dumps({"n": i, "word": f"w{i % 13}"})})
    pipe.execute()


class AckCrash(RedisStreamSource):
    """The crash window that matters: after the commit, before the acknowledgement."""

    def ack(self, polled):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("killed between commit and ack")


def test_ingest_commits_rows_quarantine_and_offset(store, client, name: str) -> None:  # type: ignore[no-untyped-def]
    produce(client, name, 0, 3000)
    client.xadd(name, {"data": b"{not json"})
    client.xadd(name, {"other": b"x"})
    stats = StreamIngester(store, RedisStreamSource(URL, name),
                           IngestConfig(dataset="ev", every_s=0.5, idle_stop_s=0.5, batch_records=1000)).run()
    # each commit holds fewer than 2 x 1,000 (see test_nats_ingest): at least two, however the polls split
    assert stats.records == 3002 and stats.quarantined == 2 and stats.commits >= 2 and stats.lag == 0
    table = store.read_table("ev")
    assert sorted(table.column("n").to_pylist()) == list(range(3000))
    assert table.column("_position").to_pylist()[0].count("-") == 1
    q = store.read_side_table("ev", "quarantine")
    assert q is not None and sorted(q.column("raw").to_pylist()) == [b"", b"{not json"]
    assert all(r.startswith("not JSON") for r in q.column("reason").to_pylist())
    off = read_offset(store.catalog, RedisStreamSource(URL, name).url, "ev", "main")
    assert off is not None and off.records == 3002 and off.version_id == store.resolve("ev").id
    assert store.manifest("ev").lineage["ingest-stream"]["through"] == off.position


def test_crash_between_commit_and_ack_neither_loses_nor_duplicates(store, client, name: str) -> None:  # type: ignore[no-untyped-def]
    produce(client, name, 0, 500)
    cfg = IngestConfig(dataset="ev", every_s=0.3, idle_stop_s=0.3)
    with pytest.raises(KeyboardInterrupt):
        StreamIngester(store, AckCrash(URL, name), cfg).run()
    assert store.read_table("ev").num_rows == 500  # committed, never acknowledged
    pending = client.xpending(name, "granary")["pending"]
    assert pending == 500
    produce(client, name, 500, 800)
    stats = StreamIngester(store, RedisStreamSource(URL, name), cfg).run()
    assert stats.records == 300
    assert sorted(store.read_table("ev").column("n").to_pylist()) == list(range(800))
    assert client.xpending(name, "granary")["pending"] == 0  # the committed ones were acknowledged on restart


def test_typed_schema_quarantines_values_that_do_not_fit(store, client, name: str) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    client.xadd(name, {"data": json.dumps({"n": 1, "word": "a"})})
    client.xadd(name, {"data": json.dumps({"n": "many", "word": "b"})})
    cfg = IngestConfig(dataset="ev", every_s=0.3, idle_stop_s=0.3, schema=pa.schema([("n", pa.int64())]))
    stats = StreamIngester(store, RedisStreamSource(URL, name), cfg).run()
    assert stats.records == 2 and stats.quarantined == 1
    assert store.read_table("ev").column("n").to_pylist() == [1]
    assert "does not fit" in store.read_side_table("ev", "quarantine").column("reason")[0].as_py()


class CrashBeforeCommit(StreamIngester):
    def _commit(self, batches, position, stats):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("killed after reading, before the commit")


@pytest.mark.parametrize("ack", ["xack", "none"])
def test_messages_read_but_not_committed_are_read_again(store, client, name: str, ack: str) -> None:  # type: ignore[no-untyped-def]
    produce(client, name, 0, 400)
    cfg = IngestConfig(dataset="ev", every_s=0.3, idle_stop_s=0.5, batch_records=150)
    StreamIngester(store, RedisStreamSource(URL, name, ack=ack), cfg).run()  # 400 committed
    produce(client, name, 400, 700)
    with pytest.raises(KeyboardInterrupt):
        CrashBeforeCommit(store, RedisStreamSource(URL, name, ack=ack), cfg).run()
    assert store.read_table("ev").num_rows == 400
    stats = StreamIngester(store, RedisStreamSource(URL, name, ack=ack), cfg).run()
    assert stats.records == 300
    assert sorted(store.read_table("ev").column("n").to_pylist()) == list(range(700))
    if ack == "xack":
        assert client.xpending(name, "granary")["pending"] == 0


@pytest.mark.slow
def test_kill9_at_random_moments_keeps_every_message_exactly_once(client, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = f"{URL}?stream={name}"
    kill_and_resume(source=source, source_id=lambda: RedisStreamSource(URL, name).url,
                    produce=lambda a, b: produce(client, name, a, b), total=20_000, kills=4, tmp_path=tmp_path)


def test_a_tabular_pipeline_runs_on_each_micro_batch(store, client, name: str) -> None:  # type: ignore[no-untyped-def]
    from granary.curate.tabular import TabularPipeline

    for i in range(200):
        client.xadd(name, {"data": json.dumps({"n": i, "age": 300 if i % 50 == 0 else 30})})
    spec = TabularPipeline.from_dict({"name": "guard", "steps": [
        {"step": "validate", "rules": [{"rule": "range", "column": "age", "max": 130}]}]})
    cfg = IngestConfig(dataset="ev", every_s=0.3, idle_stop_s=0.5, pipeline=spec)
    stats = StreamIngester(store, RedisStreamSource(URL, name), cfg).run()
    assert stats.records == 200 and stats.quarantined == 4
    assert sorted(store.read_table("ev").column("n").to_pylist()) == [i for i in range(200) if i % 50]
    q = store.read_side_table("ev", "curate_quarantine")
    assert q is not None and q.num_rows >= 1  # the head version's own batch (each version keeps its side tables)
    assert store.manifest("ev").lineage["ingest-stream"]["curate"]["pipeline"] == "guard"


def test_streaming_dedup_drops_keys_the_branch_already_holds_across_batches_and_restarts(  # type: ignore[no-untyped-def]
        store, client, name: str) -> None:
    def send(ids: list[int]) -> None:
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.xadd(name, {"data": json.dumps({"id": f"k{i}", "n": i})})
        pipe.execute()

    config = IngestConfig(dataset="dd", every_s=0.3, idle_stop_s=0.5, batch_records=700, dedup_keys=("id",))
    send([*range(1000), *range(500, 1500), *range(1200, 1300)])  # 2,100 messages, 1,500 distinct keys
    first = StreamIngester(store, RedisStreamSource(URL, name), config).run()
    assert first.records == 2100 and first.commits >= 2 and first.duplicates == 600
    send([*range(1400, 1600), 7])  # a new ingester (a restart) indexes what the branch holds
    second = StreamIngester(store, RedisStreamSource(URL, name), config).run()
    assert second.records == 201 and second.duplicates == 101
    ids = store.read_table("dd").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 1600 and set(ids) == {f"k{i}" for i in range(1600)}
    table = store.read_table("dd")
    assert table.filter(pc.equal(table.column("id"), "k7")).column("n").to_pylist() == [7]
    counted = [store.manifest(f"dd@{v.id}").lineage["ingest-stream"]["duplicates"] for v in store.log("dd")]
    assert sum(counted) == 701
