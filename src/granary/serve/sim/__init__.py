"""A simulated LLM server for tests and benchmarks (``python -m granary.serve.sim`` or ``granary gateway sim``)."""

from __future__ import annotations

from granary.serve.sim.server import SimConfig, sim_app

__all__ = ["SimConfig", "sim_app"]
