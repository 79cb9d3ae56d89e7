"""Redis Streams source: one consumer of a consumer group, large XREADGROUP reads, one XACK per micro-batch."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from granary.errors import MissingDependencyError
from granary.live.errors import SourceError
from granary.live.source import Polled, position_key

log = logging.getLogger(__name__)
ACK_CHUNK = 20_000


class RedisStreamSource:
    """Read a Redis stream through a consumer group, resuming after the position committed in the catalog.

    On start the group's last-delivered id is set to the committed position (``XGROUP SETID``), so
    messages delivered but not committed before a crash are delivered again, and pending entries at or
    before that position (committed, not yet acknowledged) are acknowledged. Replies are taken raw from
    hiredis (no per-entry dicts), and a micro-batch is acknowledged with one XACK per 20,000 ids.

    Args:
        url: ``redis://host:port/db``.
        stream: the stream key.
        group: the consumer group (created at the stream's start if missing).
        consumer: this consumer's name inside the group.
        field: the entry field holding the message body.
        ack: ``xack`` (entries wait in the group's pending list until their commit, then are acknowledged) or
            ``none`` (reads with ``NOACK``: no pending list, about twice the read rate; still exactly once,
            because a restart resumes from the catalog, but the server no longer shows what is in flight).
    """

    def __init__(self, url: str, stream: str, *, group: str = "granary", consumer: str = "granary-ingest",
                 field: str = "data", ack: str = "xack") -> None:
        if ack not in ("xack", "none"):
            raise ValueError(f"ack must be 'xack' or 'none', got {ack!r}")
        try:
            import redis
        except ImportError as exc:
            raise MissingDependencyError("redis", "live") from exc
        parsed = urlparse(url)
        db = (parsed.path or "/0").lstrip("/") or "0"
        self.url = f"redis://{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}/{db}#{stream}/{group}"
        self.stream, self.group, self.consumer = stream, group, consumer
        self.noack = ack == "none"
        self.field = field.encode()
        self.client: Any = redis.Redis.from_url(url, protocol=2)  # RESP2: flat replies, parsed by hiredis
        # raw replies: redis-py would otherwise build a dict per entry
        self.client.set_response_callback("XREADGROUP", lambda response, **_: response)
        self._committed: tuple[int, ...] | None = None

    def start(self, position: str | None) -> None:
        import redis

        start_id = position or "0"
        try:
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.client.xgroup_setid(self.stream, self.group, start_id)
            if position is not None:
                self._ack_pending_through(position)
        except redis.ConnectionError as exc:
            raise SourceError(f"cannot reach Redis for {self.url}: {exc}",
                              hint="start redis-server or fix the URL") from exc
        self._committed = position_key(position) if position else None

    def _ack_pending_through(self, position: str) -> None:
        while True:
            pending = self.client.xpending_range(self.stream, self.group, min="-", max=position, count=ACK_CHUNK)
            if not pending:
                return
            self.client.xack(self.stream, self.group, *[p["message_id"] for p in pending])

    def poll(self, max_records: int, timeout_s: float) -> Polled | None:
        reply = self.client.execute_command("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", max_records,
                                            "BLOCK", max(1, int(timeout_s * 1000)), *(("NOACK",) if self.noack else ()),
                                            "STREAMS", self.stream, ">")
        if not reply:
            return None
        entries = reply[0][1]
        if not entries:
            return None
        ids = [e[0] for e in entries]
        if self._committed is not None and position_key(ids[0].decode()) <= self._committed:
            keep = [i for i, x in enumerate(ids) if position_key(x.decode()) > self._committed]
            entries = [entries[i] for i in keep]
            ids = [ids[i] for i in keep]
            if not ids:
                return None
        field = self.field
        try:
            payloads = [e[1][1] for e in entries] if all(e[1][0] == field for e in entries) else None
        except (IndexError, TypeError):
            payloads = None
        if payloads is None:
            payloads = [_field(e[1], field) for e in entries]
        positions = pa.array(ids, pa.binary()).cast(pa.string())  # no per-id str objects
        return Polled(payloads=payloads, positions=positions, last=ids[-1].decode(), ack_token=ids)

    def ack(self, polled: Polled) -> None:
        # XACK packed here: redis-py's generic packer costs ~10 us per id, more than the server's work
        ids: list[bytes] = polled.ack_token
        if self.noack:
            self._committed = position_key(polled.last)
            return
        head = b"$4\r\nXACK\r\n" + _bulk(self.stream.encode()) + _bulk(self.group.encode())
        packed = []
        for i in range(0, len(ids), ACK_CHUNK):
            part = ids[i:i + ACK_CHUNK]
            args = b"".join([b"$%d\r\n%s\r\n" % (len(x), x) for x in part])
            packed.append(b"*%d\r\n" % (len(part) + 3) + head + args)
        conn = self.client.connection_pool.get_connection()
        try:
            conn.send_packed_command(packed)
            for _ in packed:
                conn.read_response()
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            self.client.connection_pool.release(conn)
        self._committed = position_key(polled.last)

    def lag(self) -> int | None:
        for info in self.client.xinfo_groups(self.stream):
            if info.get("name") in (self.group, self.group.encode()):
                lag = info.get("lag")
                return None if lag is None else int(lag)
        return None

    def close(self) -> None:
        self.client.close()


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _field(fields: list[bytes] | None, name: bytes) -> bytes:
    """The value of ``name`` in a flat [k, v, k, v] list (b"" when missing: it fails to decode and is quarantined)."""
    if not fields:
        return b""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return b""
