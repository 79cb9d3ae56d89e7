"""Tags travel with push and pull, and never move: a tag that names another version on the other side is
reported as a conflict, not changed (two real homes and a folder remote)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from granary.config import Settings
from granary.store import open_store
from granary.store.store import Store
from granary.store.sync import Remote, pull, push


def _store(tmp_path: Path, name: str) -> Store:
    return open_store(Settings.from_env(home=tmp_path / name))


def _commit(store: Store, tag: str) -> str:
    store.create_dataset("web", exist_ok=True)
    return store.commit_table("web", pa.table({"id": [f"{tag}-{i}" for i in range(20)], "text": [tag] * 20}),
                              message=tag).id


def test_tags_travel_and_never_move(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    remote = Remote(str(tmp_path / "remote"))
    v1 = _commit(a, "one")
    a.tag("web", "v1")
    v2 = _commit(a, "two")
    a.branch("web", "exp")
    v3 = _commit(a, "three")  # on main; exp stays at v2
    a.tag("web", "exp-start", ref="web@exp")
    first = push(a, "web", remote)
    assert first.tags == ["exp-start", "v1"] and remote.tags("web") == {"v1": v1, "exp-start": v2}
    got = pull(b, "web", remote)
    assert sorted(got.tags) == ["exp-start", "v1"]
    assert b.resolve("web@v1").id == v1 and b.read_table("web@v1").column("text").to_pylist() == ["one"] * 20

    b.tag("web", "release")  # b: release -> v3
    push(b, "web", remote)
    a.tag("web", "release", ref=f"web@{v1}")  # a: the same name at another version
    again = push(a, "web", remote)
    assert again.up_to_date and again.tag_conflicts == ["release"] and remote.tags("web")["release"] == v3
    back = pull(a, "web", remote)
    assert back.tag_conflicts == ["release"] and a.resolve("web@release").id == v1
