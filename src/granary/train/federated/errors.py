"""Errors of federated training."""

from __future__ import annotations

from granary.errors import TrainError


class FederatedError(TrainError):
    """A federated run cannot start or a round cannot complete (too few clients, bad config, refused site)."""


class UpdateRejected(FederatedError):
    """One client's update was refused (malformed, non-finite, or above the norm bound).

    Attributes:
        site: the client that sent it.
        reason: why (never the update's values).
    """

    def __init__(self, site: str, reason: str) -> None:
        self.site = site
        self.reason = reason
        super().__init__(f"update of {site} rejected: {reason}")
