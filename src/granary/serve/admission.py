"""Bounded waiting rooms: admission control for the worker, and the wait for a backend with room (circuit breaking)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

Verdict = Literal["ok", "full", "timeout"]


class WaitRoom:
    """A counted resource with a bounded FIFO of waiters and a wait timeout.

    ``enter`` takes a slot at once when one is free and nobody waits; otherwise it queues (refused with
    ``full`` when ``max_waiting`` wait already) and gives up with ``timeout`` after ``timeout_s``. ``leave``
    hands the slot straight to the oldest waiter, so waiting is fair and the count never overshoots.

    Args:
        capacity: slots (requests admitted at once); None means slots are managed elsewhere and ``enter`` only
            waits for a :meth:`wake_one` (used for "a backend of the route has room again").
        max_waiting: waiters allowed.
        timeout_s: longest wait.
    """

    def __init__(self, capacity: int | None, *, max_waiting: int, timeout_s: float) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.used = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        return len(self.waiters)

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody is waiting."""
        if self.capacity is not None and self.used < self.capacity and not self.waiters:
            self.used += 1
            return True
        return False

    async def enter(self) -> Verdict:
        """Wait for a slot (or, without capacity, for a wake-up)."""
        if self.try_enter():
            return "ok"
        if len(self.waiters) >= self.max_waiting:
            return "full"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(self.timeout_s):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():  # handed a slot just as the timer fired: keep it
                return "ok"
            return "timeout"
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and self.capacity is not None:
                self.leave()  # handed a slot, then the caller went away: pass it on
            raise
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(fut)
        return "ok"

    def leave(self) -> None:
        """Give the slot back: to the oldest waiter if any, else to the pool."""
        if not self.wake_one():
            self.used -= 1

    def wake_one(self) -> bool:
        """Hand a slot (or a wake-up) to the oldest live waiter; returns whether there was one."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        """Wake every waiter (capacity-less rooms: something changed, everyone looks again)."""
        while self.wake_one():
            pass
