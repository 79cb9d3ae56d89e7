"""Kafka into versions, exactly once — where a broker answers on 127.0.0.1:9092 (none can be installed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.live.conftest import reachable
from tests.integration.live.exactly_once import kill_and_resume

pytestmark = [pytest.mark.kafka, pytest.mark.skipif(
    not reachable(9092), reason="no Kafka or Redpanda broker on 127.0.0.1:9092 (one cannot be installed on the "
                                "machines this project is built on; the adapter is tested where one runs)")]


@pytest.mark.slow
def test_kill9_at_random_moments_keeps_every_message_exactly_once(name: str, tmp_path: Path) -> None:
    kafka = pytest.importorskip("confluent_kafka", reason="pip install 'granary[kafka]'")
    from confluent_kafka.admin import AdminClient, NewTopic

    from granary.live.kafka import KafkaSource

    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
    admin.create_topics([NewTopic(name, num_partitions=3)])[name].result(30)
    producer = kafka.Producer({"bootstrap.servers": "127.0.0.1:9092"})

    def produce(start: int, stop: int) -> None:
        for i in range(start, stop):
            producer.produce(name, json.dumps({"n": i}).encode())
        producer.flush(30)

    try:
        kill_and_resume(source=f"kafka://127.0.0.1:9092?topic={name}",
                        source_id=lambda: KafkaSource("kafka://127.0.0.1:9092", name).url,
                        produce=produce, total=20_000, kills=4, tmp_path=tmp_path, seed=3)
    finally:
        admin.delete_topics([name])
