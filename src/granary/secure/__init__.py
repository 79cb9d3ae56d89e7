"""Governance and security: encryption at rest, identities and roles, audit, purposes, forgetting, private stats.

Import the submodules you need (``granary.secure.crypto``, ``granary.secure.audit``, ...); this package
imports nothing heavy, so the store and the CLI can depend on it cheaply.
"""

from __future__ import annotations
