"""Curation errors: bad pipeline specs, failing steps and interrupted runs."""

from __future__ import annotations

from typing import Any

from granary.errors import CurateError


class PipelineSpecError(CurateError, ValueError):
    """A pipeline file or step configuration is invalid.

    Attributes:
        where: the location in the spec (file and step index or key).
    """

    def __init__(self, where: str, reason: str, *, hint: str | None = None) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"invalid pipeline at {where}: {reason}",
            hint=hint or "`granary curate steps` lists every step and its options (docs/curate.md explains them)",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # errors raised in worker processes travel back pickled: rebuild from the fields, keep the hint
        return (type(self), (self.where, self.reason), self.__dict__)


class StepFailedError(CurateError):
    """A step raised while processing one shard.

    Attributes:
        step: the step name.
        shard: the input shard index.
        reason: the underlying error.
    """

    def __init__(self, step: str, shard: int, reason: str) -> None:
        self.step = step
        self.shard = shard
        self.reason = reason
        super().__init__(
            f"step {step!r} failed on input shard {shard}: {reason}",
            hint="fix the step configuration or the input; completed shards are kept, so rerunning resumes",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.shard, self.reason), self.__dict__)
