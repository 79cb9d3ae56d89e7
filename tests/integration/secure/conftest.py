"""Fixtures: a store whose hooks are the security layer, in a temporary home."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.config import Settings
from granary.secure.hooks import SecureHooks
from granary.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Store settings in a fresh home (no grace period, so gc effects are visible at once)."""
    return Settings.from_env(environ={}, home=tmp_path / "home", gc_grace_s=0.0)


@pytest.fixture
def hooks(settings: Settings) -> SecureHooks:
    """Security hooks in local (admin) mode with a keyring inside the home."""
    return SecureHooks.from_settings(settings, environ={})


@pytest.fixture
def store(settings: Settings, hooks: SecureHooks) -> Store:
    """A store wired to the security hooks."""
    return Store(settings, hooks=hooks, catalog=hooks.guard.catalog)
