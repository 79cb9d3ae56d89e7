"""The executor interface and the local executors (inline and a spawn-based process pool)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

log = logging.getLogger(__name__)

Fn = Callable[[Any], dict[str, Any]]
OnResult = Callable[[dict[str, Any]], None]


class Executor:
    """Runs independent tasks and reports each result as it completes."""

    name = "base"
    num_workers = 1

    def map(self, fn: Fn, tasks: list[Any], on_result: OnResult) -> None:
        """Run `fn(task)` for every task; call `on_result` in the caller's process as each finishes.

        The first failing task's exception propagates after the tasks already running have finished.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release workers."""


class InlineExecutor(Executor):
    """Runs tasks one after another in this process (tests, tiny inputs, debugging)."""

    name = "inline"

    def map(self, fn: Fn, tasks: list[Any], on_result: OnResult) -> None:
        for t in tasks:
            on_result(fn(t))


class LocalExecutor(Executor):
    """A pool of worker processes on this machine (default: one per core), forked from a preloaded server."""

    name = "local"

    def __init__(self, num_workers: int | None = None) -> None:
        self.num_workers = num_workers or os.cpu_count() or 1
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: one clean server process imports Granary once, workers fork from it (no per-worker
            # re-import; safe with Arrow's threads, unlike forking this process)
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["granary.curate.engine", "granary.curate.spec", "granary.store"])
            self._pool = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=ctx)
        return self._pool

    def map(self, fn: Fn, tasks: list[Any], on_result: OnResult) -> None:
        if not tasks:
            return
        pool = self._get_pool()
        pending: set[Future[dict[str, Any]]] = {pool.submit(fn, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            failed = [f for f in done if f.exception() is not None]
            for f in done:
                if f.exception() is None:
                    on_result(f.result())
            if failed:
                for f in pending:
                    f.cancel()
                wait(pending)
                for f in pending:
                    if not f.cancelled() and f.exception() is None:
                        on_result(f.result())
                exc = failed[0].exception()
                assert exc is not None
                raise exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _ray(num_workers: int | None, address: str | None = None) -> Executor:
    from granary.curate.executors.ray import RayExecutor

    return RayExecutor(num_workers=num_workers, address=address)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "inline": lambda num_workers=None, **_: InlineExecutor(),
    "local": lambda num_workers=None, **_: (InlineExecutor() if num_workers == 1 else LocalExecutor(num_workers)),
    "ray": lambda num_workers=None, **kw: _ray(num_workers, kw.get("address")),
}


def make_executor(name: str, *, num_workers: int | None = None, **options: Any) -> Executor:
    """An executor by registry name (`inline`, `local`, `ray`)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}")
    return EXECUTORS[name](num_workers=num_workers, **options)
