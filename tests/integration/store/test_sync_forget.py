"""A subject forgotten at one site is forgotten at its replicas: receipts travel with push and pull, the remote
drops the forgotten versions' shards, and replicas expire those versions (three real homes, a folder remote)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from granary.config import Settings
from granary.errors import SyncError
from granary.secure.forget import forget, receipts
from granary.secure.hooks import SecureHooks
from granary.store import Store
from granary.store.sync import Remote, pull, push


def _site(tmp_path: Path, name: str) -> tuple[Store, SecureHooks]:
    settings = Settings.from_env(environ={}, home=tmp_path / name, gc_grace_s=0.0, shard_size_bytes=16 * 1024,
                                 row_group_bytes=8 * 1024)
    hooks = SecureHooks.from_settings(settings, environ={})
    return Store(settings, hooks=hooks, catalog=hooks.guard.catalog), hooks


def _rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)],
                     "text": [f"note {i} " * 20 for i in range(start, start + n)],
                     "subject_id": ["alice" if i < 20 else f"s{i % 10}" for i in range(start, start + n)]})


def _subjects(store: Store, ref: str) -> set[str]:
    return set(store.read_table(ref).column("subject_id").to_pylist())


def test_a_forget_at_one_site_reaches_the_remote_and_every_replica(tmp_path: Path) -> None:
    a, a_hooks = _site(tmp_path, "a")
    a.create_dataset("web")
    v1 = a.commit_table("web", _rows(200), message="crawl").id
    remote = Remote(str(tmp_path / "remote"))
    push(a, "web", remote)
    b, b_hooks = _site(tmp_path, "b")
    pull(b, "web", remote)
    assert "alice" in _subjects(b, "web")
    v1_shards = {k for k in remote.list_objects("datasets/web/data")}

    receipt = forget(a, a_hooks.guard, "web", "alice")
    head = a.resolve("web").id
    report = push(a, "web", remote)
    assert report.new_head == head
    left = set(remote.list_objects("datasets/web/data"))
    assert v1_shards - left, "the remote still holds every shard of the forgotten version"
    record = remote.dataset_record("web") or {}
    assert [json.loads(r["record"])["id"] for r in record["forgotten"]] == [receipt.id]
    assert "alice" not in json.dumps(record)  # the subject travels only as a digest

    got = pull(b, "web", remote)
    assert got.new_head == head and "alice" not in _subjects(b, "web")
    with pytest.raises(LookupError, match="expired"):
        b.read_table(f"web@{v1[:12]}")
    here = receipts(b_hooks.guard, "web")
    assert [r.id for r in here] == [receipt.id]
    here[0].verify()
    pulled = b_hooks.guard.audit.query(action="forget.pull")
    assert len(pulled) == 1 and pulled[0].details["expired"] == [v1]
    assert b_hooks.guard.audit.verify().ok
    # site a's own audit records of the dataset came along, marked as imported, once
    imported = [r for r in b_hooks.guard.audit.query(dataset="web") if "imported" in r.details]
    assert {"create", "write", "forget"} <= {r.action for r in imported}
    assert all(r.origin.startswith("import:") for r in imported)
    pull(b, "web", remote)
    assert len([r for r in b_hooks.guard.audit.query(dataset="web") if "imported" in r.details]) == len(imported)

    # a new replica pulls the whole history: the forgotten version arrives expired, without its data
    c, _ = _site(tmp_path, "c")
    fresh = pull(c, "web", remote)
    assert fresh.versions == [v1, head] and "alice" not in _subjects(c, "web")
    with pytest.raises(LookupError, match="expired"):
        c.read_table(f"web@{v1[:12]}")
    assert push(a, "web", remote).up_to_date  # nothing left to send


def test_a_receipt_altered_on_the_remote_is_refused_by_the_replica(tmp_path: Path) -> None:
    a, a_hooks = _site(tmp_path, "a")
    a.create_dataset("web")
    a.commit_table("web", _rows(100), message="crawl")
    remote = Remote(str(tmp_path / "remote"))
    forget(a, a_hooks.guard, "web", "alice")
    push(a, "web", remote)
    record = remote.dataset_record("web") or {}
    body = json.loads(record["forgotten"][0]["record"])
    body["affected_versions"] = []  # someone tries to keep the subject's data alive at the replicas
    record["forgotten"][0]["record"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    remote.put_dataset_record("web", record)
    b, b_hooks = _site(tmp_path, "b")
    with pytest.raises(SyncError, match="does not verify"):
        pull(b, "web", remote)
    assert receipts(b_hooks.guard, "web") == [] and b.datasets() == []


def test_audit_records_altered_on_the_remote_are_refused(tmp_path: Path) -> None:
    import zstandard

    a, _ = _site(tmp_path, "a")
    a.create_dataset("web")
    a.commit_table("web", _rows(50), message="crawl")
    remote = Remote(str(tmp_path / "remote"))
    push(a, "web", remote)
    [site] = remote.audit_sites("web")
    lines = zstandard.decompress(remote.get_audit("web", site)).decode().splitlines()
    first = json.loads(lines[0])
    first["principal"] = "someone-else"
    remote.put_audit("web", site, zstandard.compress("\n".join([json.dumps(first), *lines[1:]]).encode()))
    b, b_hooks = _site(tmp_path, "b")
    with pytest.raises(SyncError, match="does not match its hash"):
        pull(b, "web", remote)
    assert not [r for r in b_hooks.guard.audit.query(dataset="web") if "imported" in r.details]


def test_audit_records_travel_incrementally_by_sequence(tmp_path: Path) -> None:
    import zstandard

    from granary.store.sync import audits

    a, a_hooks = _site(tmp_path, "a")
    a.create_dataset("web")
    a.commit_table("web", _rows(50), message="crawl")
    remote = Remote(str(tmp_path / "remote"))
    push(a, "web", remote)
    b, b_hooks = _site(tmp_path, "b")
    pull(b, "web", remote)
    first_pull = len([r for r in b_hooks.guard.audit.query(dataset="web") if "imported" in r.details])
    assert first_pull > 0

    a.commit_table("web", _rows(50, start=50), message="more")
    push(a, "web", remote)
    [(site, parts)] = audits.segments(remote, "web").items()
    assert site == audits.site_id(a) and len(parts) == 2
    (_, last1, key1), (first2, last2, key2) = parts
    assert first2 > last1  # the second push sent only what the first had not
    second = [json.loads(x) for x in zstandard.decompress(remote.get_audit("web", key2)).decode().splitlines()]
    own_after = [r.seq for r in a_hooks.guard.audit.query(dataset="web", after_seq=last1, limit=None)
                 if "imported" not in r.details and r.seq <= last2]
    assert [r["seq"] for r in second] == own_after and second[-1]["seq"] == last2
    push(a, "web", remote)  # sends what happened since, the last push's own read among it
    third = audits.segments(remote, "web")[site][2]
    assert third[0] > last2

    # the first segment, already imported by b, is not read again: altering it now goes unnoticed by b's pull,
    # while the new records arrive, each once
    remote.put_audit("web", key1, zstandard.compress(b"not json"))
    pull(b, "web", remote)
    imported = [r for r in b_hooks.guard.audit.query(dataset="web") if "imported" in r.details]
    seqs = [r.details["imported"]["seq"] for r in imported]
    in_third = zstandard.decompress(remote.get_audit("web", third[2])).decode().count("\n") + 1
    assert len(seqs) == len(set(seqs)) == first_pull + len(second) + in_third
    assert b_hooks.guard.audit.verify().ok
