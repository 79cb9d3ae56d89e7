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
from granary.catalog import open_catalog
from granary.monitor.gpu import FakeNvml
from granary.monitor.metrics import parse
from granary.monitor.series import SeriesStore

pytestmark = pytest.mark.slow


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


def test_sched_up_runs_the_monitor_and_jobs_push_to_it(tmp_path: Path) -> None:
    from granary.sched.journal import get_job, submit_job
    from granary.sched.model import JobSpec

    port = _port()
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "GRANARY_HOME": str(tmp_path / "home"), "GRANARY_CATALOG_URL": url}
    catalog = open_catalog(url)
    code = ("import sys; from granary.monitor.push import push; "
            "sys.exit(0 if push({'granary_train_step': 7}, labels={'rank': '0'}) else 3)")
    job = submit_job(catalog, JobSpec(name="pusher", command=[sys.executable, "-c", code]))
    proc = subprocess.Popen([sys.executable, "-m", "granary.cli.main", "sched", "up", "--node", "m1", "--gpus", "0",
                             "--tick-s", "0.1", "--monitor-port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while get_job(catalog, job)[0].state not in ("succeeded", "failed"):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, get_job(catalog, job)[0]
            time.sleep(0.2)
        assert get_job(catalog, job)[0].state == "succeeded", get_job(catalog, job)
        samples = _scrape(f"http://127.0.0.1:{port}/metrics")
        assert samples[("granary_train_step", (("job", job), ("node", "m1"), ("rank", "0")))] == 7.0
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
