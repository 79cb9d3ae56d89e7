"""Shared fixtures: an isolated store per test, on SQLite by default or on a fresh PostgreSQL database."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from granary.config import Settings

try:
    from hypothesis import HealthCheck
    from hypothesis import settings as hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis comes with granary[dev]
    pass
else:
    # `ci` (what `make test` selects): the same examples on every run, so a landing never meets a new random
    # counterexample; `random` (`make test-random`, and the default outside make): fresh exploration each run.
    hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                                         suppress_health_check=[HealthCheck.too_slow])
    hypothesis_settings.register_profile("random", deadline=None, print_blob=True,
                                         suppress_health_check=[HealthCheck.too_slow])
    hypothesis_settings.load_profile(os.environ.get("GRANARY_HYPOTHESIS_PROFILE", "random"))

PG_ADMIN_URL = os.environ.get("GRANARY_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")
_CREATED: list[str] = []


def _pg_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'granary[postgres]')"
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"no PostgreSQL server at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.granary from a test."""
    monkeypatch.setenv("GRANARY_HOME", str(tmp_path / "granary-home"))
    for var in ("GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL", "GRANARY_AUTH", "GRANARY_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session (dropped afterwards)."""
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    import psycopg

    name = f"granary_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from granary.catalog.db import forget_upgrades

    forget_upgrades()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        for db in [name, *_CREATED]:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def fresh_pg_database(pg_url: str) -> str:
    """Another fresh database on the same server (for tests that need an empty catalog)."""
    import psycopg

    name = f"granary_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    _CREATED.append(name)
    return f"{pg_url.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of an empty local store in tmp_path (SQLite catalog), with small shards."""
    return Settings.from_env(home=tmp_path / "g", shard_size_bytes=64 * 1024, row_group_bytes=16 * 1024)


@pytest.fixture
def store(settings: Settings):  # type: ignore[no-untyped-def]
    from granary.store import open_store

    s = open_store(settings)
    yield s
    s.catalog.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same tests on a SQLite and on a PostgreSQL catalog."""
    from granary.store import open_store

    if request.param == "postgres":
        url = fresh_pg_database(request.getfixturevalue("pg_url"))
        s = open_store(Settings.from_env(home=tmp_path / "g", catalog_url=url, shard_size_bytes=64 * 1024,
                                         row_group_bytes=16 * 1024))
    else:
        s = open_store(Settings.from_env(home=tmp_path / "g", shard_size_bytes=64 * 1024, row_group_bytes=16 * 1024))
    yield s
    s.catalog.dispose()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) with a bucket named ``granary``; no real S3 is reachable from tests."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is needed for the S3 tests (granary[dev])")
    boto3 = pytest.importorskip("boto3", reason="boto3 is needed for the S3 tests (granary[dev])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="granary")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the test session (a start costs seconds; executors reuse a running one)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'granary[ray]')")
    from granary.curate.executors.ray import init_ray

    started = not ray.is_initialized()
    if started:
        init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
