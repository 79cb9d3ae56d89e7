"""The HTTP API and web dashboard over every part of Granary (``granary server``; needs ``granary[server]``)."""

from __future__ import annotations

from granary.api.config import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(*args: object, **kwargs: object) -> object:
    """Build the FastAPI application (see :func:`granary.api.app.create_app`)."""
    from granary.api.app import create_app as _create

    return _create(*args, **kwargs)  # type: ignore[arg-type]
