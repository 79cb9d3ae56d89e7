"""A thread that owns a message source: reads ahead into a bounded queue and acknowledges on request.

Reading the next micro-batch while the previous one is committed overlaps network waits with Parquet
writing. Every call on the source (start, poll, ack, lag, close) is made from this one thread, so client
libraries that are not thread-safe (pika, nats-py's event loop) are used as they expect. The queue is
bounded in messages: when commits fall behind, the pump stops reading and messages wait in the broker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from granary.live.source import MessageSource, Polled

log = logging.getLogger(__name__)
POLL_S = 0.1  # the longest a poll blocks, so acknowledgements and stop requests are served promptly


class SourcePump:
    """Run ``source`` in a thread: ``get`` returns read-ahead batches, ``ack`` queues acknowledgements."""

    def __init__(self, source: MessageSource, *, poll_records: int, max_buffered: int,
                 limit: int | None = None) -> None:
        self.source = source
        self.remaining = limit  # read no more than this many messages in all (``max_records``)
        self.poll_records = poll_records
        self.max_buffered = max(max_buffered, poll_records)
        self._out: queue.Queue[Polled | BaseException] = queue.Queue()
        self._acks: queue.Queue[Polled] = queue.Queue()
        self._buffered = 0
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.lag: int | None = None
        self.idle_since: float | None = None  # when a read last came back empty (None: messages are flowing)
        self.error: BaseException | None = None

    def start(self, position: str | None) -> None:
        """Start the thread; returns once the source is positioned (or raises what positioning raised)."""
        self._thread = threading.Thread(target=self._run, args=(position,), name="granary-source-pump", daemon=True)
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise self.error

    def get(self, timeout_s: float) -> Polled | None:
        """The next read-ahead batch, or None after ``timeout_s``; re-raises an error of the source."""
        try:
            item = self._out.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        with self._room:
            self._buffered -= len(item)
            self._room.notify()
        return item

    def idle_s(self) -> float:
        """How long the source has had nothing new to read (0 while messages flow or are buffered)."""
        since = self.idle_since
        if since is None or not self._out.empty():
            return 0.0
        return time.monotonic() - since

    def ack(self, polled: Polled) -> None:
        """Acknowledge ``polled`` from the pump thread (called after its commit)."""
        self._acks.put(polled)

    def close(self, timeout_s: float = 60.0) -> None:
        """Serve the queued acknowledgements, then stop reading and close the source."""
        self._stop.set()
        with self._room:
            self._room.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error

    def _run(self, position: str | None) -> None:
        try:
            self.source.start(position)
        except BaseException as exc:
            self.error = exc
            self._started.set()
            try:
                self.source.close()  # a half-open client (connected, then refused) must not leak
            except Exception:
                log.debug("closing %s after a failed start failed", self.source.url, exc_info=True)
            return
        self._started.set()
        try:
            while not self._stop.is_set():
                self._serve_acks()
                with self._room:
                    if self._buffered >= self.max_buffered:
                        self._room.wait(POLL_S)
                        continue
                ask = self.poll_records if self.remaining is None else min(self.poll_records, self.remaining)
                if ask <= 0:
                    self._stop.wait(POLL_S)
                    continue
                polled = self.source.poll(ask, POLL_S)
                if polled is not None and self.remaining is not None:
                    self.remaining -= len(polled)
                if polled is None:
                    if self.idle_since is None:
                        self.idle_since = time.monotonic()
                else:
                    self.idle_since = None
                    with self._room:
                        self._buffered += len(polled)
                    self._out.put(polled)
            self._serve_acks()
            try:
                self.lag = self.source.lag()
            except Exception:  # informational only
                log.debug("lag unavailable", exc_info=True)
        except BaseException as exc:
            self.error = exc
            self._out.put(exc)
        finally:
            try:
                self.source.close()
            except Exception:
                log.warning("closing %s failed", self.source.url, exc_info=True)

    def _serve_acks(self) -> None:
        while True:
            try:
                polled = self._acks.get_nowait()
            except queue.Empty:
                return
            self.source.ack(polled)
