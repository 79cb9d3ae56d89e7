"""Push, pull and sync between real stores (two homes; a folder remote and an S3 remote on moto's server)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granary.config import Settings
from granary.errors import DivergedError, SyncError
from granary.store import open_store
from granary.store.store import Store
from granary.store.sync import Remote, TransferOptions, pull, push, sync
from granary.store.sync.registry import add_remote, list_remotes, open_remote, remove_remote


class Recorder:
    """Hooks that allow everything and keep what the store records (to check pushes are audited)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def authorize(self, action: str, dataset: str, *, purpose: str | None = None) -> None:
        return None

    def record(self, action: str, dataset: str, *, version: str | None = None, outcome: str = "ok",
               details: dict[str, Any] | None = None) -> None:
        self.records.append((action, dataset, dict(details or {})))

    def encrypts(self, dataset: str) -> bool:
        return False

    def prepare_gc(self, store: Any, *, dry_run: bool = False) -> dict[str, Any]:
        return {}


def _store(tmp_path: Path, name: str, **kw: Any) -> Store:
    return open_store(Settings.from_env(home=tmp_path / name, shard_size_bytes=64 * 1024,
                                        row_group_bytes=16 * 1024), **kw)


def _commit(store: Store, tag: str, rows: int = 200, dataset: str = "web") -> str:
    store.create_dataset(dataset, exist_ok=True)
    table = pa.table({"id": [f"{tag}-{i}" for i in range(rows)], "text": [f"{tag} document {i} " * 8
                                                                          for i in range(rows)]})
    return store.commit_table(dataset, table, message=tag).id


def _remote_is_consistent(remote: Remote, dataset: str) -> None:
    """No branch on the remote points at a version whose manifest, segments or shards are missing."""
    from granary.store.manifest import decode_segment, parse_envelope

    present = remote.list_objects(f"datasets/{dataset}")
    for _branch, head in remote.branches(dataset).items():
        todo = [head]
        while todo:
            vid = todo.pop()
            key = f"datasets/{dataset}/manifests/{vid}.json"
            assert key in present, f"ref reaches version {vid[:12]} whose manifest is missing"
            _, body, _ = parse_envelope(remote.get_object(key), key=key)
            for seg in body["segments"]:
                assert seg["key"] in present
                for e in decode_segment(remote.get_object(seg["key"]), key=seg["key"],
                                        expected_sha256=seg["sha256"]):
                    assert present.get(e.key) == e.bytes, f"shard {e.key} missing or short"
            todo.extend(body["parents"])


def test_push_then_pull_reproduces_every_version(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    heads = [_commit(a, f"c{i}") for i in range(3)]
    a.tag("web", "v1", ref=f"web@{heads[1]}")
    remote = Remote(str(tmp_path / "remote"))
    sent = push(a, "web", remote)
    assert sent.new_head == heads[-1] and sent.versions == heads and sent.transfer.objects > 0
    got = pull(b, "web", remote)
    assert got.versions == heads
    assert [v.id for v in b.log("web")] == heads[::-1]
    assert b.read_table("web").equals(a.read_table("web"))
    assert b.verify().ok
    assert push(a, "web", remote).up_to_date
    assert pull(b, "web", remote).up_to_date
    _remote_is_consistent(remote, "web")


def test_the_second_push_sends_only_what_changed(tmp_path: Path) -> None:
    a = _store(tmp_path, "a")
    _commit(a, "base", rows=3000)
    remote = Remote(str(tmp_path / "remote"))
    first = push(a, "web", remote)
    with a.transaction("web") as txn:  # a small change on top: one more shard
        txn.write(pa.table({"id": ["new-1"], "text": ["one more"]}))
        new = txn.commit(message="small change")
    second = push(a, "web", remote)
    changed = {e.key: e.bytes for e in a.manifest(new).shards} .keys() - {e.key for e in a.manifest(first.new_head
                                                                                                       or "").shards}
    assert second.versions == [new.id]
    assert second.transfer.skipped > 0
    assert second.transfer.objects <= len(changed) + 3  # the new shard(s), one segment, one manifest
    assert second.transfer.bytes < first.transfer.bytes / 5


def test_diverged_branches_are_refused_naming_both_heads_and_force_is_audited(tmp_path: Path) -> None:
    rec = Recorder()
    a, b = _store(tmp_path, "a", hooks=rec), _store(tmp_path, "b")
    _commit(a, "shared")
    remote = Remote(str(tmp_path / "remote"))
    push(a, "web", remote)
    pull(b, "web", remote)
    a_head, b_head = _commit(a, "only-a"), _commit(b, "only-b")
    push(a, "web", remote)
    with pytest.raises(DivergedError) as err:
        push(b, "web", remote)
    assert b_head[:12] in str(err.value) and a_head[:12] in str(err.value)
    assert remote.read_ref("web", "main").version_id == a_head  # nothing moved
    with pytest.raises(DivergedError):
        pull(b, "web", remote)
    assert b.resolve("web").id == b_head
    side = pull(b, "web", remote, to_branch="from-a")  # the way out the hint names
    assert side.new_head == a_head and b.resolve("web@from-a").id == a_head
    b_forced = push(b, "web", remote, force=True)
    assert b_forced.forced and remote.read_ref("web", "main").version_id == b_head
    forced = push(a, "web", remote, force=True)
    assert forced.forced
    assert ("push", "web") in {(r[0], r[1]) for r in rec.records}
    assert any(r[0] == "push" and r[2]["forced"] and r[2]["old_head"] == b_head for r in rec.records)


def test_concurrent_pushes_of_different_heads_leave_exactly_one_winner(tmp_path: Path) -> None:
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    _commit(a, "base")
    remote = Remote(str(tmp_path / "remote"))
    push(a, "web", remote)
    pull(b, "web", remote)
    heads = {"a": _commit(a, "a", rows=2000), "b": _commit(b, "b", rows=2000)}
    outcome: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def run(name: str, store: Store) -> None:
        barrier.wait()
        try:
            push(store, "web", remote)
            outcome[name] = "ok"
        except (DivergedError, SyncError) as exc:
            outcome[name] = type(exc).__name__

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcome.values()).count("ok") == 1, outcome
    winner = next(n for n, o in outcome.items() if o == "ok")
    assert remote.read_ref("web", "main").version_id == heads[winner]
    _remote_is_consistent(remote, "web")


_ops = st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["commit", "push", "pull"]), st.integers(1, 30)),
               min_size=1, max_size=14)


@given(ops=_ops)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_operations_at_two_sites_keep_the_remote_consistent_and_converge(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]]) -> None:
    """Any schedule of commits, pushes and pulls at two sites never leaves a ref to a missing object, and after each
    site syncs (pull, then push; a diverged site takes the remote's head), both end at the same head."""
    base = tmp_path_factory.mktemp("sites")
    sites = {"a": _store(base, "a"), "b": _store(base, "b")}
    remote = Remote(str(base / "remote"))
    _commit(sites["a"], "seed", rows=20)
    push(sites["a"], "web", remote)
    pull(sites["b"], "web", remote)
    for step, (name, op, rows) in enumerate(ops):
        store = sites[name]
        try:
            if op == "commit":
                _commit(store, f"{name}{step}", rows=rows)
            elif op == "push":
                push(store, "web", remote)
            else:
                pull(store, "web", remote)
        except DivergedError:
            pass  # expected when both sides committed; the invariant must hold regardless
        _remote_is_consistent(remote, "web")
    for name in "ab":
        try:
            sync(sites[name], "web", remote)
        except DivergedError:
            pull(sites[name], "web", remote, force=True)
    assert sites["a"].resolve("web").id == sites["b"].resolve("web").id == remote.read_ref("web", "main").version_id
    assert sites["a"].verify().ok and sites["b"].verify().ok
    for s in sites.values():
        s.catalog.dispose()


def test_push_and_pull_through_an_s3_remote(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    a, b = _store(tmp_path, "a"), _store(tmp_path, "b")
    heads = [_commit(a, f"c{i}") for i in range(2)]
    add_remote(a, "cloud", "s3://granary/team-remote", options={"endpoint_url": s3_endpoint})
    assert [r["name"] for r in list_remotes(a)] == ["cloud"]
    remote = open_remote(a, "cloud")
    push(a, "web", remote, options=TransferOptions(jobs=4))
    _remote_is_consistent(remote, "web")
    got = pull(b, "web", Remote("s3://granary/team-remote", options={"endpoint_url": s3_endpoint}))
    assert got.versions == heads and b.read_table("web").equals(a.read_table("web"))
    b_head = _commit(b, "from-b")
    push(b, "web", remote)
    assert pull(a, "web", remote).new_head == b_head
    _commit(b, "b2")
    a_head = _commit(a, "a2")
    push(a, "web", remote)
    with pytest.raises(DivergedError):
        push(b, "web", remote)
    assert remote.read_ref("web", "main").version_id == a_head
    remove_remote(a, "cloud")
    assert list_remotes(a) == []


_PUSHER = textwrap.dedent("""
    import sys
    from granary.config import Settings
    from granary.store import open_store
    from granary.store.sync import Remote, TransferOptions, push
    store = open_store(Settings.from_env(home=sys.argv[1]))
    push(store, "web", Remote(sys.argv[2]), options=TransferOptions(jobs=2, bwlimit_bytes_s=float(sys.argv[3])))
""")


@pytest.mark.slow
def test_kill_9_during_push_never_exposes_missing_objects_and_the_next_push_resends_nothing(tmp_path: Path) -> None:
    a = _store(tmp_path, "a")
    for i in range(4):
        _commit(a, f"c{i}", rows=1500)
    head = a.resolve("web").id
    remote_dir = tmp_path / "remote"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    total = sum(e.bytes for v in a.versions("web") for e in a.manifest(v).shards)
    rate = max(total / 2.0, 50_000)  # the whole push takes ~2 s at this cap: kills land throughout
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _PUSHER, str(tmp_path / "a"), str(remote_dir), str(rate)],
                                env=env, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()[-2000:]
        remote = Remote(str(remote_dir))
        _remote_is_consistent(remote, "web")
        assert remote.read_ref("web", "main").version_id in (None, head)
    remote = Remote(str(remote_dir))
    before = remote.list_objects("datasets/web")
    final = push(a, "web", remote)
    if final.up_to_date:
        return
    assert not set(final.transfer.keys) & set(before), "an object already on the remote was sent again"
    assert remote.read_ref("web", "main").version_id == head
    _remote_is_consistent(remote, "web")
    b = _store(tmp_path, "b")
    pull(b, "web", remote)
    assert b.verify().ok and b.read_table("web").num_rows == 6000


def test_the_cli_pushes_and_pulls_with_json_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from granary.cli.main import app

    runner = CliRunner()
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a = open_store(Settings.from_env(home=a_home))
    head = _commit(a, "cli")

    def run(home: Path, *args: str, code: int = 0) -> Any:
        monkeypatch.setenv("GRANARY_HOME", str(home))
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return json.loads(result.stdout) if "--json" in args and code == 0 else result.output

    run(a_home, "remote", "add", "origin", str(tmp_path / "remote"))
    out = run(a_home, "push", "web", "origin", "--json")
    assert out["new_head"] == head and out["objects"] >= 3
    out = run(b_home, "pull", "web", str(tmp_path / "remote"), "--json")
    assert out["new_head"] == head and out["versions"] == [head]
    assert run(a_home, "remote", "list", "--json")[0]["name"] == "origin"
    assert "no remote named 'nowhere'" in run(a_home, "push", "web", "nowhere", code=1)


def test_a_pulled_dataset_keeps_its_policy_and_is_refused_without_an_allowed_purpose(tmp_path: Path) -> None:
    from granary.errors import SecurityError
    from granary.secure.policy import Policy, PolicyBook

    a = _store(tmp_path, "a")
    _commit(a, "restricted")
    PolicyBook(a.catalog).set("web", Policy(licenses=frozenset({"CC-BY-NC-4.0"}), purposes=frozenset({"research"}),
                                            retention_days=30.0))
    remote = Remote(str(tmp_path / "remote"))
    push(_store(tmp_path, "a"), "web", remote, purpose="research")  # a fresh open: the policy is now enforced
    assert remote.dataset_record("web")["policy"]["purposes"] == ["research"]
    pull(_store(tmp_path, "b"), "web", remote)
    b = _store(tmp_path, "b")  # reopened: the pulled policy is in its catalog, so it is enforced there too
    got = PolicyBook(b.catalog).get("web")
    assert got.purposes == frozenset({"research"}) and got.licenses == {"CC-BY-NC-4.0"} and got.retention_days == 30
    with pytest.raises(SecurityError):
        b.read_table("web")
    assert b.read_table("web", purpose="research").num_rows == 200
