"""Push and pull through another site's `granary server` (an http:// remote): a real server process with tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from tests.integration.api.server_proc import running_server

from granary.config import Settings
from granary.errors import SyncError
from granary.secure.audit import AuditLog
from granary.secure.hooks import SecureHooks
from granary.store import open_store
from granary.store.store import Store
from granary.store.sync import pull, push
from granary.store.sync.http import HttpRemote
from granary.store.sync.registry import add_remote, open_remote


def _store(path: Path) -> Store:
    return open_store(Settings.from_env(home=path, shard_size_bytes=64 * 1024, row_group_bytes=16 * 1024))


def _commit(store: Store, tag: str, rows: int = 300, dataset: str = "web") -> str:
    store.create_dataset(dataset, exist_ok=True)
    table = pa.table({"id": [f"{tag}-{i}" for i in range(rows)],
                      "text": [f"{tag} page {i} " * 10 for i in range(rows)]})
    return store.commit_table(dataset, table, message=tag).id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Settings]]:
    """A server in tokens mode; a writer and a reader of tenant `default`, and an outsider with no role."""
    home = tmp_path_factory.mktemp("server-site")
    settings = Settings.from_env(home=home)
    hooks = SecureHooks.from_settings(settings, environ={})
    guard = hooks.guard
    tokens = {}
    for name, role in (("wendy", "writer"), ("rex", "reader"), ("otto", None)):
        guard.add_principal(name, tenant="default")
        if role:
            guard.grant(name, role, tenant="default")  # type: ignore[arg-type]
        tokens[name] = guard.issue_token(name, scopes=("read", "write")).secret
    with running_server(settings, auth="tokens", log=home / "server.log") as url:
        yield url, tokens, settings


def _remote(url: str, token: str, monkeypatch: pytest.MonkeyPatch) -> HttpRemote:
    monkeypatch.setenv("GRANARY_REMOTE_TOKEN", token)
    return HttpRemote(url)


def test_a_push_to_a_server_is_pulled_identically_at_a_third_site(
        server: tuple[str, dict[str, str], Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, tokens, settings = server
    a = _store(tmp_path / "a")
    v1 = _commit(a, "one", dataset="pages")
    a.tag("pages", "first")
    v2 = _commit(a, "two", dataset="pages")
    first = push(a, "pages", _remote(url, tokens["wendy"], monkeypatch))
    assert first.new_head == v2 and first.versions == [v1, v2] and first.transfer.objects > 2
    assert first.tags == ["first"]
    again = push(a, "pages", _remote(url, tokens["wendy"], monkeypatch))
    assert again.up_to_date
    b = _store(tmp_path / "b")
    got = pull(b, "pages", _remote(url, tokens["rex"], monkeypatch))
    assert got.new_head == v2
    assert b.read_table("pages").sort_by("id").equals(a.read_table("pages").sort_by("id"))
    assert [v.id for v in b.log("pages")] == [v.id for v in a.log("pages")]
    assert got.tags == ["first"] and b.resolve("pages@first").id == v1
    # the server audited who looked, who sent and who fetched, and the branch move, once each (not per object)
    entries = AuditLog(SecureHooks.from_settings(settings, environ={}).guard.catalog).query(dataset="pages")
    actions = [(e.principal, e.action) for e in entries]
    assert actions.count(("wendy", "sync.receive")) == 1 and actions.count(("rex", "sync.send")) == 1
    assert all(action.startswith("sync.") for _, action in actions) and len(actions) == 5
    assert [e.details["new"] for e in entries if e.action == "sync.ref"] == [v2]
    assert [(e.object, e.details["version"]) for e in entries if e.action == "sync.tag"] == [("first", v1)]


def test_a_reader_cannot_push_and_a_stranger_cannot_even_look(
        server: tuple[str, dict[str, str], Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, tokens, _ = server
    a = _store(tmp_path / "a")
    _commit(a, "three")
    with pytest.raises(SyncError, match=r"\(403\)"):
        push(a, "web", _remote(url, tokens["rex"], monkeypatch), to_branch="reader-branch")
    with pytest.raises(SyncError, match=r"\(403\)"):
        pull(_store(tmp_path / "c"), "web", _remote(url, tokens["otto"], monkeypatch))
    monkeypatch.setenv("GRANARY_REMOTE_TOKEN", "not-a-token")
    with pytest.raises(SyncError, match=r"\(401\): malformed API token") as refused:
        HttpRemote(url)
    assert "GRANARY_REMOTE_TOKEN" in (refused.value.hint or "")


def test_the_server_refuses_an_object_that_does_not_hash_to_its_key_and_keeps_nothing(
        server: tuple[str, dict[str, str], Settings], tmp_path: Path) -> None:
    url, tokens, settings = server
    key = "datasets/web/data/ab/" + "ab" * 16 + ".parquet"
    headers = {"Authorization": f"Bearer {tokens['wendy']}"}
    resp = httpx.put(f"{url}/api/v1/sync/objects/{key}", content=b"not what the key promises", headers=headers)
    assert resp.status_code == 422 and "failed its check" in resp.json()["detail"]
    assert httpx.head(f"{url}/api/v1/sync/objects/{key}", headers=headers).status_code == 404
    assert not list((settings.home / "sync-repo" / "objects" / "datasets" / "web" / "data" / "ab").glob("ab*"))
    bad = httpx.get(f"{url}/api/v1/sync/objects/datasets/web/../../etc/passwd", headers=headers)
    assert bad.status_code in (400, 404)
    # audit segments: one that was never pushed is a 404, a name that is no segment key is refused
    missing = httpx.get(f"{url}/api/v1/sync/audit/web/site-x.000000000001-000000000002", headers=headers)
    assert missing.status_code == 404 and "no audit segment" in missing.json()["detail"]
    assert httpx.get(f"{url}/api/v1/sync/audit/web/..%2Fsecrets", headers=headers).status_code in (400, 404, 422)


def test_a_branch_moves_only_by_compare_and_swap(
        server: tuple[str, dict[str, str], Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, tokens, _ = server
    a = _store(tmp_path / "a")
    _commit(a, "cas")
    remote = _remote(url, tokens["wendy"], monkeypatch)
    push(a, "web", remote, to_branch="cas")
    seen = remote.read_ref("web", "cas")
    _commit(a, "cas-2")
    push(a, "web", remote, to_branch="cas")
    with pytest.raises(SyncError, match="moved while pushing"):
        remote.cas_ref("web", "cas", expected=seen, new=seen.version_id or "")
    headers = {"Authorization": f"Bearer {tokens['wendy']}"}
    resp = httpx.put(f"{url}/api/v1/sync/refs/web/cas", headers=headers,
                     json={"expected": remote.read_ref("web", "cas").version_id, "new": "f" * 64})
    assert resp.status_code == 400 and "has no manifest" in resp.json()["detail"]
    bad = httpx.put(f"{url}/api/v1/sync/refs/web/cas", headers=headers, json={"expected": None, "new": "../../x"})
    assert bad.status_code == 422  # a version id is 64 hex digits, nothing else reaches the repository


def test_a_named_http_remote_works_from_the_cli(
        server: tuple[str, dict[str, str], Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from granary.cli.main import app

    url, tokens, _ = server
    a = _store(tmp_path / "a")
    head = _commit(a, "cli")
    monkeypatch.setenv("GRANARY_REMOTE_TOKEN", tokens["wendy"])
    add_remote(a, "site", url)
    assert isinstance(open_remote(a, "site"), HttpRemote)
    monkeypatch.setenv("GRANARY_HOME", str(a.settings.home))
    result = CliRunner().invoke(app, ["push", "web", "site", "--to-branch", "cli", "--json"])
    assert result.exit_code == 0, result.output
    out: Any = __import__("json").loads(result.output)
    assert out["new_head"] == head
    result = CliRunner().invoke(app, ["backup", "create", "site"])
    assert result.exit_code != 0 and "not to a Granary server" in result.output
