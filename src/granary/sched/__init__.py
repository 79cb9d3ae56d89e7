"""The control plane: a GPU job scheduler with a pure state machine, policies, placement, executors,
a durable controller, node agents and a trace-driven simulator.

Import what you need from the submodules; this package imports nothing heavy.
"""

from __future__ import annotations

from granary.sched.model import JobSpec, NodeSpec
from granary.sched.state import SchedulerConfig, SchedulerState

__all__ = ["JobSpec", "NodeSpec", "SchedulerConfig", "SchedulerState"]
