"""One controller per catalog: a second is refused with who holds the lease; a dead holder is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.integration.sched.conftest import cli, env_for

from granary.catalog import open_catalog
from granary.sched.lease import ControllerBusyError, ControllerLeaseLostError, Lease, lease_table


def test_second_holder_is_refused_until_release_or_expiry(catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    first, second = Lease(catalog, ttl_s=30), Lease(catalog, ttl_s=30)
    first.acquire(1000.0)
    with pytest.raises(ControllerBusyError, match=f"pid {os.getpid()} on host"):
        second.acquire(1010.0)
    first.release()
    second.acquire(1011.0)  # released: taken at once
    third = Lease(catalog, ttl_s=30)
    third.acquire(1011.0 + 31)  # second went silent past its lease: replaced
    with catalog.write() as conn, pytest.raises(ControllerLeaseLostError):
        second.renew(conn, 1011.0 + 32)  # the old holder learns it lost the lease and stops


def _holder_pid(catalog_url: str) -> int | None:
    with open_catalog(catalog_url).read() as conn:
        row = conn.execute(sa.select(lease_table.c.pid)).first()
    return None if row is None else int(row.pid)


def _wait_holder(catalog_url: str, pid: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # only bounds a hang
    while _holder_pid(catalog_url) != pid:
        assert proc.poll() is None, f"controller exited {proc.returncode}: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the controller did not take the lease within 60 s"
        time.sleep(0.1)


@pytest.mark.slow
def test_second_sched_up_is_refused_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    env = env_for(tmp_path / "home", url)
    up = ["sched", "up", "--no-agent", "--tick-s", "0.2"]
    first = cli(up, env)
    try:
        _wait_holder(url, first.pid, first)
        second = subprocess.run([sys.executable, "-m", "granary.cli.main", *up], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1, second.stderr
        assert f"another controller already runs on this catalog: pid {first.pid}" in second.stderr
        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lease
        first.wait()
        third = cli(up, env)
        try:
            _wait_holder(url, third.pid, third)  # same host, holder process gone: taken over at once
        finally:
            os.killpg(third.pid, signal.SIGINT)
            third.wait(60)
        assert _holder_pid(url) is None  # a controller stopped with Ctrl-C releases the lease
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
