"""Granary: versioned datasets, curation, streaming, scheduling and governance for AI training data."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
