"""RabbitMQ stream queues: consumed from the offset after the committed one, acked per micro-batch."""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from granary.errors import MissingDependencyError
from granary.live.errors import SourceError
from granary.live.source import Polled

log = logging.getLogger(__name__)
PREFETCH = 20_000  # unacknowledged deliveries the broker may send ahead (a micro-batch holds at most this many)
DRAIN_S = 0.02  # after the first delivery of a poll, stop when the broker sends nothing for this long


class RabbitStreamSource:
    """Read a RabbitMQ stream queue (``x-queue-type: stream``) from the offset after the committed one.

    A stream keeps its messages after they are consumed and numbers them, so the consumer can start at
    ``x-stream-offset = committed + 1``: the catalog says where to resume, and the ingestion is exactly
    once. (A classic queue has no offsets: messages requeued after a crash cannot be told apart from new
    ones, so it is refused.) A micro-batch is acknowledged with one ``basic.ack(multiple=True)``.

    Args:
        url: ``amqp://user:password@host:port/vhost``.
        queue: the stream queue (declared as a durable stream if missing).
    """

    def __init__(self, url: str, queue: str) -> None:
        try:
            import pika
        except ImportError as exc:
            raise MissingDependencyError("pika", "live") from exc
        self.params = pika.URLParameters(url)
        self.url = f"amqp://{self.params.host}:{self.params.port}/{self.params.virtual_host}#{queue}"
        self.queue = queue
        self.connection: Any = None
        self.channel: Any = None
        self._pending: list[tuple[Any, Any, bytes]] = []
        self._first = 0

    def start(self, position: str | None) -> None:
        import pika
        import pika.exceptions

        try:
            self.connection = pika.BlockingConnection(self.params)
        except pika.exceptions.AMQPConnectionError as exc:
            raise SourceError(f"cannot reach RabbitMQ for {self.url}: {exc!r}",
                              hint="start rabbitmq-server, or fix the URL and credentials") from exc
        self.channel = self.connection.channel()
        try:
            self.channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "stream"})
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise SourceError(f"queue {self.queue!r} exists and is not a stream queue: {exc.reply_text}",
                              hint="exactly-once ingestion needs a stream queue (x-queue-type: stream), whose "
                                   "offsets can be resumed; a classic queue cannot be") from exc
        self.channel.basic_qos(prefetch_count=PREFETCH)
        self._first = int(position) + 1 if position else 0
        offset: Any = self._first if position else "first"
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=False,
                                   arguments={"x-stream-offset": offset})

    def _on_message(self, _ch: Any, method: Any, properties: Any, body: bytes) -> None:
        # a stream delivers from the start of the chunk holding the requested offset: skip what came before
        # (the acknowledgement of a later delivery covers it: multiple=True)
        if int(properties.headers["x-stream-offset"]) >= self._first:
            self._pending.append((method, properties, body))

    def poll(self, max_records: int, timeout_s: float) -> Polled | None:
        deadline = time.monotonic() + timeout_s
        while len(self._pending) < max_records:
            before = len(self._pending)
            now = time.monotonic()
            wait = DRAIN_S if before else max(0.0, deadline - now)
            self.connection.process_data_events(time_limit=wait)
            if len(self._pending) == before and (before or time.monotonic() >= deadline):
                break
        if not self._pending:
            return None
        taken, self._pending = self._pending[:max_records], self._pending[max_records:]
        offsets = [int(p.headers["x-stream-offset"]) for _, p, _ in taken]
        return Polled(payloads=[b for _, _, b in taken], positions=pa.array(offsets, pa.int64()).cast(pa.string()),
                      last=str(offsets[-1]), ack_token=[m.delivery_tag for m, _, _ in taken])

    def ack(self, polled: Polled) -> None:
        self.channel.basic_ack(delivery_tag=polled.ack_token[-1], multiple=True)

    def lag(self) -> int | None:
        return None  # a stream queue's message count includes consumed messages: no lag to read from it

    def close(self) -> None:
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("closing the RabbitMQ connection failed", exc_info=True)
