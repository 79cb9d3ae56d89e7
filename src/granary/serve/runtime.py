"""Event-loop set-up shared by the gateway, its workers and the simulated servers."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when asked for and installed, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed (pip install 'granary[serve]'); using asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: object, *, use_uvloop: bool = True) -> object:
    """Run a coroutine to completion on a new loop (uvloop when possible) and close the loop."""
    loop = new_event_loop(use_uvloop)
    try:
        return loop.run_until_complete(main)  # type: ignore[arg-type]
    finally:
        loop.close()
