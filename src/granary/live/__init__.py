"""Live data into versions: exactly-once ingestion of message streams (Redis, NATS, RabbitMQ, Kafka)."""

from __future__ import annotations

from granary.live.ingest import IngestConfig, IngestStats, StreamIngester
from granary.live.offsets import Offset, list_offsets, read_offset

__all__ = ["IngestConfig", "IngestStats", "Offset", "StreamIngester", "list_offsets", "read_offset"]
