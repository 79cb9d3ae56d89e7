"""Fixtures of the stream-ingestion tests: real servers on 127.0.0.1, skipped with the reason when absent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def reachable(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def name() -> str:
    """A fresh stream/queue name for one test."""
    return f"granary-test-{uuid.uuid4().hex[:10]}"


def start_ingester(source: str, dataset: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    """`granary ingest-stream` in a child process (stderr kept in ``log`` to print on failure)."""
    return subprocess.Popen(
        [sys.executable, "-m", "granary.cli.main", "ingest-stream", source, "-d", dataset, "--json", *extra],
        stdout=subprocess.PIPE, stderr=log.open("ab"), env=dict(os.environ))


def wait_for(cond: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail after ``timeout_s`` (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
