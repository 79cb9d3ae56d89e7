"""The application factory uvicorn imports (``granary.api.serve:app``); settings come from the environment."""

from __future__ import annotations

from fastapi import FastAPI


def app() -> FastAPI:
    """Build the app from ``GRANARY_*`` environment variables (what ``granary server`` exported)."""
    from granary.api.app import create_app

    return create_app()
