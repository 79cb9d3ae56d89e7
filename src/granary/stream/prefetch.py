"""Reader threads: compute ``fn(item)`` for a stream of items ahead of the consumer, delivered in order."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from granary.stream import background

T = TypeVar("T")
R = TypeVar("R")


class _Shared:
    """State shared by the reader threads and the consumer (guarded by ``cond``)."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.source = iter(items)
        self.take_lock = threading.Lock()
        self.cond = threading.Condition()
        self.results: dict[int, tuple[bool, Any]] = {}
        self.taken = 0
        self.exhausted = False
        self.stop = False


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, num_threads: int, depth: int,
                caller_runs: bool = False) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by ``num_threads`` threads.

    At most about ``depth`` results wait ahead of the consumer (bounded memory). An exception raised by ``fn``
    is re-raised in the consumer at that item's turn. Closing the generator early stops the threads and waits for
    them to finish the item they hold.

    With ``caller_runs``, a consumer that would wait for its next result computes the next untaken item itself
    instead of idling (for work that releases the GIL, such as the loader's gather kernels): ``num_threads``
    threads plus the consumer then work in parallel. A consumer busy elsewhere (a training step) leaves all the
    work to the threads.
    """
    shared = _Shared(items)
    threads = [background.start(_run, fn, shared, depth, name=f"granary-reader-{i}") for i in range(num_threads)]
    try:
        n = 0
        while True:
            with shared.cond:
                while n not in shared.results and not (shared.exhausted and n >= shared.taken):
                    if caller_runs and not shared.exhausted and len(shared.results) < depth:
                        shared.cond.release()
                        try:
                            _step(fn, shared)
                        finally:
                            shared.cond.acquire()
                        continue
                    shared.cond.wait(0.1)
                if n not in shared.results:
                    return
                ok, value = shared.results.pop(n)
                if len(shared.results) >= depth - 1:  # it was full: readers may wait for room (otherwise
                    shared.cond.notify_all()  # nobody waits on this pop, and notify_all costs the GIL dearly)
            if not ok:
                raise value
            yield value
            n += 1
    finally:
        with shared.cond:
            shared.stop = True
            shared.cond.notify_all()
        # Wait for the threads to finish the item they hold (a group gather: milliseconds), so no native kernel
        # is still running in a thread of a loader the caller has closed (nor at interpreter exit).
        for th in threads:
            if th is not threading.current_thread():
                th.join(60.0)


def _run(fn: Callable[[Any], Any], shared: _Shared, depth: int) -> None:
    while True:
        with shared.cond:
            while not shared.stop and len(shared.results) >= depth:
                shared.cond.wait(0.1)
            if shared.stop or background.exiting():
                return
        if not _step(fn, shared):
            return


def _step(fn: Callable[[Any], Any], shared: _Shared) -> bool:
    """Take the next item and store ``fn(item)`` (or its exception) under its sequence number; False when the
    items are exhausted."""
    with shared.take_lock:
        try:
            item = next(shared.source)
        except StopIteration:
            with shared.cond:
                shared.exhausted = True
                shared.cond.notify_all()
            return False
        except BaseException as exc:  # the items' own generator failed: delivered at its turn
            with shared.cond:
                shared.results[shared.taken] = (False, exc)
                shared.taken += 1
                shared.exhausted = True
                shared.cond.notify_all()
            return False
        seq = shared.taken
        shared.taken += 1
    try:
        result: tuple[bool, Any] = (True, fn(item))
    except BaseException as exc:  # delivered to the consumer, which re-raises it at this item's turn
        result = (False, exc)
    with shared.cond:
        shared.results[seq] = result
        shared.cond.notify_all()
    return True
