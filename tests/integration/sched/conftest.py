"""Fixtures for scheduler integration tests: catalogs on SQLite and on a throw-away PostgreSQL database."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from granary.catalog import open_catalog
from granary.catalog.db import forget_upgrades
from granary.sched.journal import list_jobs
from granary.sched.model import TERMINAL

PG_ADMIN = "postgresql://root@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # any connection problem means: no server here
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({exc})")
    name = f"granary_test_{secrets.token_hex(4)}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://root@127.0.0.1:5432/{name}"
    finally:
        forget_upgrades()
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


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
