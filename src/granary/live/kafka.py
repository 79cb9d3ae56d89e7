"""Kafka (or Redpanda) source: partitions assigned at the offsets committed in the catalog (confluent-kafka).

Not tested on the machines this project is built on (no broker can be installed there); its test runs where
a broker answers on 127.0.0.1:9092 and skips with that reason elsewhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from granary.errors import MissingDependencyError
from granary.live.errors import SourceError
from granary.live.source import Polled

log = logging.getLogger(__name__)


class KafkaSource:
    """Read every partition of a topic from the offsets after the ones committed in the catalog.

    The position is a JSON object ``{partition: last committed offset}``; partitions it does not name start
    at their beginning. The consumer group's offsets are committed to Kafka after each version (for tools
    that watch the group), but the catalog is what the ingester resumes from.

    Args:
        url: ``kafka://host:port`` (several brokers: ``kafka://h1:9092,h2:9092``).
        topic: the topic.
        group: the consumer group id.
    """

    def __init__(self, url: str, topic: str, *, group: str = "granary") -> None:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("confluent-kafka", "kafka") from exc
        self.brokers = urlparse(url).netloc or "127.0.0.1:9092"
        self.url = f"kafka://{self.brokers}#{topic}/{group}"
        self.topic, self.group = topic, group
        self.consumer: Any = None
        self.offsets: dict[int, int] = {}

    def start(self, position: str | None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

        self.offsets = {int(p): int(o) for p, o in json.loads(position).items()} if position else {}
        self.consumer = Consumer({"bootstrap.servers": self.brokers, "group.id": self.group,
                                  "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            meta = self.consumer.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            raise SourceError(f"cannot reach Kafka at {self.brokers}: {exc}",
                              hint="start the broker or fix the URL") from exc
        partitions = sorted((meta.topics.get(self.topic) and meta.topics[self.topic].partitions) or {})
        if not partitions:
            raise SourceError(f"Kafka has no topic {self.topic!r} at {self.brokers}",
                              hint="create the topic first")
        self.consumer.assign([
            TopicPartition(self.topic, p, self.offsets[p] + 1 if p in self.offsets else OFFSET_BEGINNING)
            for p in partitions])

    def poll(self, max_records: int, timeout_s: float) -> Polled | None:
        msgs = [m for m in self.consumer.consume(num_messages=max_records, timeout=timeout_s) if m.error() is None]
        if not msgs:
            return None
        for m in msgs:
            self.offsets[m.partition()] = m.offset()
        positions = pa.array([f"{m.partition()}:{m.offset()}" for m in msgs], pa.string())
        return Polled(payloads=[m.value() or b"" for m in msgs], positions=positions,
                      last=json.dumps({str(p): o for p, o in sorted(self.offsets.items())}),
                      ack_token=[(m.partition(), m.offset()) for m in msgs])

    def ack(self, polled: Polled) -> None:
        from confluent_kafka import TopicPartition

        last: dict[int, int] = {}
        for p, o in polled.ack_token:
            last[p] = max(o, last.get(p, -1))
        self.consumer.commit(offsets=[TopicPartition(self.topic, p, o + 1) for p, o in last.items()],
                             asynchronous=False)

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
