"""Fixtures: a seeded catalog on SQLite and on PostgreSQL, and API clients in local and tokens mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from granary.config import Settings
from tests.conftest import fresh_pg_database
from tests.integration.api.seed import Seeded, seed

pytest.importorskip("fastapi", reason="the API needs granary[server]")
pytest.importorskip("httpx", reason="the API tests need httpx (granary[dev])")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Seeded]:
    """Store settings of a seeded catalog (SQLite file, or a fresh PostgreSQL database), shared by a module's
    tests: they only add to it (a branch, a cancel request, audit records), never remove."""
    home = tmp_path_factory.mktemp("api") / "g"
    if request.param == "postgres":
        url = fresh_pg_database(request.getfixturevalue("pg_url"))
        settings = Settings.from_env(environ={}, home=home, catalog_url=url)
    else:
        settings = Settings.from_env(environ={}, home=home)
    return settings, seed(settings)


def make_client(settings: Settings, auth: str) -> Any:
    from fastapi.testclient import TestClient

    from granary.api.app import create_app
    from granary.api.config import ServerSettings

    return TestClient(create_app(settings, ServerSettings(auth=auth)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def local(backend: tuple[Settings, Seeded]) -> Iterator[Any]:
    """A client of an app in local mode (every request is the local admin)."""
    with make_client(backend[0], "local") as client:
        yield client


@pytest.fixture(scope="module")
def tokens(backend: tuple[Settings, Seeded]) -> Iterator[Any]:
    """A client of an app in tokens mode (deny by default)."""
    with make_client(backend[0], "tokens") as client:
        yield client


def auth(seeded: Seeded, role: str) -> dict[str, str]:
    """The Authorization header of the seeded principal holding ``role``."""
    return {"Authorization": f"Bearer {seeded.tokens_by_role[role]}"}
