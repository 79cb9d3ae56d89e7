"""Executors decide where tasks run (this process, local processes, a Ray cluster); steps never know."""

from __future__ import annotations

from granary.curate.executors.base import EXECUTORS, Executor, make_executor

__all__ = ["EXECUTORS", "Executor", "make_executor"]
