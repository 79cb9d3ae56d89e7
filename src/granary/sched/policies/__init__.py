"""Scheduling policies, a registry keyed by short names (``fifo``, ``priority``, ``sjf``, ``easy``,
``tiresias``, ``fairshare``, ``mlfq`` - the default)."""

from __future__ import annotations

from typing import Any

from granary.sched.errors import UnknownNameError
from granary.sched.policies.base import Policy

POLICIES: dict[str, type[Policy]] = {}
DEFAULT_POLICY = "mlfq"


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: register a policy under ``cls.name``."""
    POLICIES[cls.name] = cls
    return cls


def get_policy(name: str, **options: Any) -> Policy:
    """A new instance of the policy called ``name``."""
    if name not in POLICIES:
        raise UnknownNameError("policy", name, list(POLICIES))
    return POLICIES[name](**options)


from granary.sched.policies import classic, fairshare, mlfq, pollux  # noqa: E402,F401  (registration)

__all__ = ["DEFAULT_POLICY", "POLICIES", "Policy", "get_policy", "register"]
