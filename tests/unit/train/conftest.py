"""Fixtures shared by the training unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.train.helpers import make_tokens

# what torchrun or a drill sets in the environment, and would make an in-process trainer think it is one rank of a
# larger run, a resumed attempt, a straggler or a purpose-bound reader
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT", "GRANARY_TRAIN_SLOW",
                "GRANARY_PURPOSE")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Granary home with a small tokens dataset, and a clean launch environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("GRANARY_HOME", str(home))
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    make_tokens(home)
    return home
