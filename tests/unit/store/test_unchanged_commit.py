"""A commit that changes nothing returns the existing head; allow_empty=True forces a new version."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from granary.config import Settings
from granary.store import Store
from granary.store.hooks import NullHooks


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(Settings.from_env(environ={}, home=tmp_path / "home"), hooks=NullHooks())


def _docs(n: int) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(n)], "text": [f"t{i}" for i in range(n)]})


def test_repeating_a_commit_returns_the_head(store: Store) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(10), mode="overwrite", message="first")
    again = store.commit_table("web", _docs(10), mode="overwrite", message="again")  # a re-run
    assert again.id == v1.id and len(store.versions("web")) == 1
    with store.transaction("web") as txn:  # nothing written at all
        assert txn.commit(message="nothing").id == v1.id
        assert txn.stats.extra["unchanged"]
    with store.transaction("web") as txn:
        txn.delete_where("id == 'nope'")
        assert txn.commit().id == v1.id
    assert len(store.versions("web")) == 1


def test_allow_empty_and_real_changes_make_versions(store: Store) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(10), mode="overwrite")
    forced = store.commit_table("web", _docs(10), mode="overwrite", message="forced", allow_empty=True)
    assert forced.id != v1.id and forced.parents == [v1.id]
    meta = store.commit_table("web", _docs(10), mode="overwrite", metadata={"license": "CC0-1.0"})
    assert meta.id != forced.id  # a metadata change is a change
    more = store.commit_table("web", _docs(3), mode="overwrite")
    assert more.id != meta.id and more.num_rows == 3
    assert len(store.versions("web")) == 4


def test_cli_delete_without_a_match_keeps_the_head(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.cli.main import app

    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(10))
    for var in ("GRANARY_SECURE", "GRANARY_ENCRYPT", "GRANARY_AUTH", "GRANARY_CATALOG_URL", "GRANARY_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GRANARY_HOME", str(store.settings.home))
    result = CliRunner().invoke(app, ["delete", "web", "--where", "id == 'x'", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["version"] == v1.id and out["unchanged"] is True
    result = CliRunner().invoke(app, ["delete", "web", "--where", "id == 'x'", "--allow-empty", "--json"])
    assert json.loads(result.output)["version"] != v1.id
