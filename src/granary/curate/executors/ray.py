"""The Ray executor: the same tasks as the local executor, as Ray remote functions (extra `ray`)."""

from __future__ import annotations

import logging
from typing import Any

from granary.curate.executors.base import Executor, Fn, OnResult
from granary.errors import MissingDependencyError

log = logging.getLogger(__name__)


def init_ray(attempts: int = 3, **kwargs: Any) -> Any:
    """``ray.init(**kwargs)``, retried when a local start times out.

    Ray waits a fixed 30 s for a new local node's raylet to register; on a loaded machine that start can take
    longer, and a second try (after shutting the half-started instance down) then succeeds. Connecting to an
    existing cluster (``address``) is tried once.
    """
    import ray

    tries = 1 if kwargs.get("address") else attempts
    for attempt in range(1, tries + 1):
        try:
            return ray.init(**kwargs)
        except Exception as exc:  # Ray raises a bare Exception for the startup timeout
            if attempt == tries or "timed out during startup" not in str(exc):
                raise
            log.warning("Ray's local start timed out (try %d of %d); retrying", attempt, tries)
            ray.shutdown()
    raise AssertionError("unreachable")


class RayExecutor(Executor):
    """Runs each task as a Ray task with one CPU; connects to `address` or starts a local Ray instance.

    The run directory and the store must be reachable from every Ray node (a shared filesystem or an
    object store URL such as s3://), exactly as for the local executor's worker processes.
    """

    name = "ray"

    def __init__(self, num_workers: int | None = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise MissingDependencyError("ray", "ray") from exc
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True}
            if address:
                kwargs["address"] = address
            elif num_workers:
                kwargs["num_cpus"] = num_workers
            init_ray(**kwargs)
            self._started = True
        self.num_workers = num_workers or int(ray.cluster_resources().get("CPU", 1))

    def map(self, fn: Fn, tasks: list[Any], on_result: OnResult) -> None:
        if not tasks:
            return
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = [remote.remote(t) for t in tasks]
        error: BaseException | None = None
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                on_result(ray.get(done[0]))
            except ray.exceptions.RayTaskError as exc:
                error = error or exc.as_instanceof_cause()
                for ref in pending:
                    ray.cancel(ref)
                pending = []
        if error is not None:
            raise error

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
