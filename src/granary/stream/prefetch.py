"""Reader threads: produce items of a fixed list of tasks ahead of the consumer, delivered in task order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

def ordered_threads(produce: Callable[[int], T], tasks: Sequence[int], *, num_threads: int,
                    depth: int) -> Iterator[T]:
    """Yield ``produce(t)`` for each task in order; thread ``i`` computes tasks ``i, i + n, ...``.

    Each thread has its own bounded queue (``depth`` items), so memory stays at ``num_threads * depth`` items.
    An exception in a thread is re-raised in the consumer at that task's turn. Closing the generator early
    stops the threads (they are daemons and never block on a full queue for longer than 0.1 s at a time).
    """
    stop = threading.Event()
    queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in range(num_threads)]

    def run(i: int) -> None:
        for t in tasks[i::num_threads]:
            try:
                item: object = produce(t)
            except BaseException as exc:  # delivered to the consumer, which re-raises it
                item = _Failure(exc)
            while not stop.is_set():
                try:
                    queues[i].put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or isinstance(item, _Failure):
                return

    threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"granary-reader-{i}")
               for i in range(num_threads)]
    for th in threads:
        th.start()
    try:
        for n in range(len(tasks)):
            item = queues[n % num_threads].get()
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
