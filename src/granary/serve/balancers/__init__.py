"""Balancing policies, pure and network-free, registered by short name (``round_robin``, ``p2c``, ...)."""

from __future__ import annotations

from granary.serve.balancers import adaptive, classic, hashing, prefix
from granary.serve.balancers.base import POLICIES, Balancer, RequestInfo, make_balancer

__all__ = ["POLICIES", "Balancer", "RequestInfo", "adaptive", "classic", "hashing", "make_balancer", "prefix"]
