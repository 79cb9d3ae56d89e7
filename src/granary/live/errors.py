"""Errors of the stream ingesters."""

from __future__ import annotations

from granary.errors import GranaryError


class LiveError(GranaryError):
    """Base of stream-ingestion errors."""


class SourceError(LiveError):
    """A message source is unreachable or misconfigured."""


class OffsetConflictError(LiveError):
    """Another ingester committed to the same source and branch since this one read its offset.

    Attributes:
        source: the source URL.
        dataset: the dataset name.
        expected: the position this ingester started from.
        actual: the position found in the catalog.
    """

    def __init__(self, source: str, dataset: str, expected: str | None, actual: str | None) -> None:
        self.source = source
        self.dataset = dataset
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the offset of {source} into {dataset} moved from {expected!r} to {actual!r} under this ingester",
            hint="run one ingester per source and dataset branch; restart this one to resume from the catalog",
        )
