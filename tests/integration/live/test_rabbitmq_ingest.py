"""RabbitMQ stream queues into versions, exactly once, against the real server on 127.0.0.1:5672."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from granary.live import IngestConfig, StreamIngester, read_offset
from granary.live.errors import SourceError
from granary.live.rabbitmq import RabbitStreamSource
from tests.integration.live.conftest import reachable
from tests.integration.live.exactly_once import kill_and_resume

pika = pytest.importorskip("pika", reason="pika is needed (pip install 'granary[live]')")
pytestmark = [pytest.mark.rabbitmq,
              pytest.mark.skipif(not reachable(5672), reason="no RabbitMQ on 127.0.0.1:5672 (.ci/run starts one)")]
URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class Producer:
    """A stream queue and a publisher with confirms."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        self.ch.confirm_delivery()

    def publish(self, start: int, stop: int, body: bytes | None = None) -> None:
        for i in range(start, stop):
            self.ch.basic_publish("", self.queue, body or json.dumps({"n": i}).encode())

    def close(self) -> None:
        self.ch.queue_delete(self.queue)
        self.conn.close()


@pytest.fixture
def producer(name: str) -> Iterator[Producer]:
    p = Producer(name)
    yield p
    p.close()


def test_ingest_commits_rows_quarantine_and_offset(store, producer: Producer) -> None:  # type: ignore[no-untyped-def]
    producer.publish(0, 2000)
    producer.publish(0, 1, b"\xff\xfe")
    src = RabbitStreamSource(URL, producer.queue)
    stats = StreamIngester(store, src, IngestConfig(dataset="ev", every_s=0.5, idle_stop_s=3,
                                                    batch_records=700)).run()
    # each commit holds fewer than 2 x 700 (see test_nats_ingest): at least two, however the polls split
    assert stats.records == 2001 and stats.quarantined == 1 and stats.commits >= 2
    assert sorted(store.read_table("ev").column("n").to_pylist()) == list(range(2000))
    off = read_offset(store.catalog, src.url, "ev", "main")
    assert off is not None and off.position == "2000" and off.records == 2001  # stream offsets start at 0


def test_resume_after_a_crash_before_ack(store, producer: Producer) -> None:  # type: ignore[no-untyped-def]
    class AckCrash(RabbitStreamSource):
        def ack(self, polled):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt("killed between commit and ack")

    producer.publish(0, 300)
    cfg = IngestConfig(dataset="ev", every_s=0.3, idle_stop_s=3)
    with pytest.raises(KeyboardInterrupt):
        StreamIngester(store, AckCrash(URL, producer.queue), cfg).run()
    assert store.read_table("ev").num_rows == 300
    producer.publish(300, 450)
    assert StreamIngester(store, RabbitStreamSource(URL, producer.queue), cfg).run().records == 150
    assert sorted(store.read_table("ev").column("n").to_pylist()) == list(range(450))


def test_a_classic_queue_is_refused_with_the_reason(store, name: str) -> None:  # type: ignore[no-untyped-def]
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    try:
        with pytest.raises(SourceError, match="not a stream queue"):
            StreamIngester(store, RabbitStreamSource(URL, name), IngestConfig(dataset="ev", idle_stop_s=0.1)).run()
    finally:
        ch.queue_delete(name)
        conn.close()


@pytest.mark.slow
def test_kill9_at_random_moments_keeps_every_message_exactly_once(producer: Producer, tmp_path: Path) -> None:
    kill_and_resume(source=f"{URL}?queue={producer.queue}",
                    source_id=lambda: RabbitStreamSource(URL, producer.queue).url,
                    produce=producer.publish, total=10_000, kills=3, tmp_path=tmp_path, seed=2)
