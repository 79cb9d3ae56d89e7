"""Run `granary server` as a real process for the tests, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from granary.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(settings: Settings, *, auth: str = "local", log: Path, deadline_s: float = 60.0,
                   tls: tuple[Path, Path] | None = None, workers: int = 1,
                   env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `granary server` on a free port over ``settings``' catalog (HTTPS with ``tls`` = (cert, key)) with
    ``workers`` worker processes and ``env`` added to the environment; yields its base URL."""
    port = free_port()
    env = {**os.environ, "GRANARY_HOME": str(settings.home), "GRANARY_CATALOG_URL": settings.catalog_url,
           "GRANARY_STORAGE_URL": settings.storage_url, "GRANARY_AUTH": auth, **(env or {})}
    cmd = [sys.executable, "-m", "granary.cli.main", "server", "--port", str(port), "--workers", str(workers)]
    if tls is not None:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"granary server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=5, verify=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                raise AssertionError(f"granary server did not answer within {deadline_s} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
