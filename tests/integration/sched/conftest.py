"""Fixtures for scheduler integration tests: catalogs on SQLite and on a throw-away PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import fresh_pg_database

from granary.catalog import open_catalog
from granary.catalog.db import forget_upgrades
from granary.sched.journal import list_jobs
from granary.sched.model import TERMINAL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh catalog per test; PostgreSQL through the suite's one server setting (GRANARY_TEST_PG_URL, see
    tests/conftest.py), which skips with the reason when no server is reachable."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    url = fresh_pg_database(request.getfixturevalue("pg_url"))  # dropped with the session's databases
    yield url
    forget_upgrades()


def cli(args: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[bytes]:
    """Start `granary ARGS` as a subprocess in its own session."""
    return subprocess.Popen([sys.executable, "-m", "granary.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kw)


def env_for(home: Path, url: str) -> dict[str, str]:
    return {**os.environ, "GRANARY_HOME": str(home), "GRANARY_CATALOG_URL": url}


def wait_all_done(url: str, count: int, timeout_s: float) -> list:  # type: ignore[type-arg]
    catalog = open_catalog(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = list_jobs(catalog, limit=10_000)
        if len(rows) == count and all(r.state in TERMINAL for r in rows):
            return rows
        time.sleep(0.3)
    rows = list_jobs(catalog, limit=10_000)
    raise AssertionError(f"not done after {timeout_s} s: {sorted((r.state, r.reason) for r in rows)[:10]}")
