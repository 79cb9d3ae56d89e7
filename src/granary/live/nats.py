"""NATS JetStream source: a durable pull consumer recreated at the committed sequence, acked with AckAll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from granary.errors import MissingDependencyError
from granary.live.errors import SourceError
from granary.live.source import Polled

log = logging.getLogger(__name__)
FETCH_MAX = 10_000  # messages asked for in one pull request


class NatsJetStreamSource:
    """Read a JetStream stream from the sequence after the one committed in the catalog.

    On start the durable consumer is deleted and created again at ``committed + 1`` (deliver policy
    ``by_start_sequence``): the catalog, not the server, says where to resume, so messages delivered but
    not committed before a crash are delivered again and committed ones never are. The consumer acks with
    ``AckPolicy.ALL``: one acknowledgement of a micro-batch's last message covers all of it. Positions are
    stream sequences. All calls run on this source's own event loop, from the one thread that uses it.

    Args:
        url: ``nats://host:port``.
        stream: the JetStream stream name.
        subject: only messages on this subject (default: every subject of the stream).
        durable: the consumer name.
    """

    def __init__(self, url: str, stream: str, *, subject: str | None = None, durable: str = "granary") -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("nats-py", "live") from exc
        parsed = urlparse(url)
        self.server = f"nats://{parsed.hostname or '127.0.0.1'}:{parsed.port or 4222}"
        self.url = f"{self.server}#{stream}/{durable}" + (f"/{subject}" if subject else "")
        self.stream, self.subject, self.durable = stream, subject, durable
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None
        self.sub: Any = None

    def _run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def start(self, position: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self._run(self._start(int(position) + 1 if position else 1))

    async def _start(self, start_seq: int) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            self.nc = await nats.connect(self.server, connect_timeout=5, max_reconnect_attempts=2)
        except Exception as exc:  # nats-py raises several unrelated types for an unreachable server
            raise SourceError(f"cannot reach NATS at {self.server}: {exc}",
                              hint="start nats-server with -js, or fix the URL") from exc
        self.js = self.nc.jetstream()
        try:
            await self.js.stream_info(self.stream)
        except NotFoundError:
            hint = f"create it, e.g. `nats stream add {self.stream} --subjects '{self.stream}.>'`"
            raise SourceError(f"JetStream has no stream {self.stream!r} at {self.server}", hint=hint) from None
        with contextlib.suppress(NotFoundError):  # first start: no consumer yet
            await self.js.delete_consumer(self.stream, self.durable)
        config = ConsumerConfig(durable_name=self.durable, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=start_seq, ack_policy=AckPolicy.ALL, max_ack_pending=-1,
                                filter_subject=self.subject, ack_wait=3600)
        await self.js.add_consumer(self.stream, config)
        self.sub = await self.js.pull_subscribe_bind(self.durable, self.stream)

    def poll(self, max_records: int, timeout_s: float) -> Polled | None:
        polled: Polled | None = self._run(self._poll(min(max_records, FETCH_MAX), timeout_s))
        return polled

    async def _poll(self, batch: int, timeout_s: float) -> Polled | None:
        import nats.errors

        try:
            msgs = await self.sub.fetch(batch=batch, timeout=max(timeout_s, 0.01))
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either, depending on where it timed out
            return None
        if not msgs:
            return None
        seqs = [_stream_seq(m) for m in msgs]
        positions = pa.array(seqs, pa.int64()).cast(pa.string())
        return Polled(payloads=[m.data for m in msgs], positions=positions, last=str(seqs[-1]), ack_token=msgs)

    def ack(self, polled: Polled) -> None:
        self._run(self._ack(polled.ack_token[-1]))

    async def _ack(self, msg: Any) -> None:
        await msg.ack()  # AckPolicy.ALL: covers every earlier message of the consumer
        await self.nc.flush()

    def lag(self) -> int | None:
        info = self._run(self.js.consumer_info(self.stream, self.durable))
        return int(info.num_pending)

    def close(self) -> None:
        if self.loop is None:
            return
        try:
            if self.nc is not None:
                self._run(self.nc.close())
        finally:
            close_loop(self.loop)
            self.loop = None


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop`` (the client's reader tasks) and close it, leaving nothing to warn at exit."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _stream_seq(msg: Any) -> int:
    """The stream sequence from the ack subject ($JS.ACK.[domain.hash.]stream.consumer.delivered.sseq...)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[7])
    return int(msg.metadata.sequence.stream)
