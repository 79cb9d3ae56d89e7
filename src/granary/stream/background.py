"""The loader's background threads (block verification, page population, readers) end before the interpreter does.

A daemon thread still running while Python finalizes is cut down when it next needs the GIL (``pthread_exit``
on Python < 3.14); if that happens while the process is tearing down native libraries (torch, gloo), the process
can abort (``terminate called without an active exception``) after the training loop finished. Every background
thread of the loader is started here, checks :func:`exiting` between units of work, and is joined (bounded) by
an ``atexit`` hook, which runs after the main program ends and before finalization.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

JOIN_BOUND_S = 30.0  # only bounds a hang at exit: each unit of work (one block hash, one madvise) is short

_exiting = threading.Event()
_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_lock = threading.Lock()


def start(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` that is joined at interpreter exit."""
    thread = threading.Thread(target=target, args=args, daemon=True, name=name)
    with _lock:
        _threads.add(thread)
    thread.start()
    return thread


def exiting() -> bool:
    """True once the interpreter is exiting: a background loop returns at its next check."""
    return _exiting.is_set()


def join_all(timeout_s: float = JOIN_BOUND_S) -> list[str]:
    """Ask every background thread to stop and wait for them; returns the names of any still running."""
    _exiting.set()
    deadline = time.monotonic() + timeout_s
    with _lock:
        threads = list(_threads)
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def _reset_after_fork() -> None:
    """A forked child has none of the parent's threads (and may exit normally later)."""
    global _lock, _exiting
    _lock = threading.Lock()
    _exiting = threading.Event()
    _threads.clear()


atexit.register(join_all)
os.register_at_fork(after_in_child=_reset_after_fork)
