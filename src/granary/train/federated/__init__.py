"""Federated training across Granary sites with Flower: site clients, the coordinator's strategy, local runs.

Importing this package imports neither flwr nor torch; they load when a site or the coordinator starts.
Needs the ``privacy`` extra and Flower (see docs/privacy.md for installing flwr next to Granary).
"""

from __future__ import annotations

from granary.train.federated.config import FedConfig, SiteConfig
from granary.train.federated.errors import FederatedError, UpdateRejected

__all__ = ["FedConfig", "FederatedError", "SiteConfig", "UpdateRejected"]
