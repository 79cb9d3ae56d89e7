"""Fixtures for the security tests: a fresh catalog and home per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.catalog import Catalog, open_catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """A migrated SQLite catalog in a temporary directory."""
    cat = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield cat
    cat.dispose()
