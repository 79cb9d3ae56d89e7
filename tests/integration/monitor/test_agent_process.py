"""`granary agent` as a real process: faults injected from another process through the fake NVML state file
(no GPU here), scraped over HTTP, stored in the catalog; SIGTERM/SIGINT end it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.slow

from granary.catalog import open_catalog
from granary.monitor.gpu import FakeNvml
from granary.monitor.metrics import parse
from granary.monitor.series import SeriesStore


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=10) as r:
        return {(n, lab): v for n, lab, v in parse(r.read().decode())}


def test_agent_process_reports_an_injected_xid(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    fake = FakeNvml.with_gpus(2, state_file=state)
    fake.save()
    port = _port()
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "GRANARY_HOME": str(tmp_path / "home"), "GRANARY_CATALOG_URL": url}
    proc = subprocess.Popen([sys.executable, "-m", "granary.cli.main", "agent", "--node", "p1", "--port", str(port),
                             "--interval", "0.2", "--store-every-s", "0", "--fake-state", str(state)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/metrics"
        key = ("granary_gpu_xid_errors_total", (("gpu", "1"), ("node", "p1")))
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if _scrape(base).get(key) == 0.0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the agent never served its first sample"
            time.sleep(0.2)
        fake.inject_xid(1, 48)
        fake.save()
        while _scrape(base).get(key) != 1.0:
            assert time.monotonic() < deadline + 30, "the injected XID never showed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130), proc.stderr.read().decode() if proc.stderr else ""
    (xid,) = SeriesStore(open_catalog(url)).read("granary_gpu_xid_errors_total", match={"gpu": "1"})
    assert xid.labels["node"] == "p1" and xid.values[0] == 0.0 and xid.values[-1] == 1.0
