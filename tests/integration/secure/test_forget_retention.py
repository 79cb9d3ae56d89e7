"""Forgetting a data subject, retention policies applied by gc, and the signed receipts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from granary.secure.errors import CryptoError
from granary.secure.forget import build_filter, forget, receipts
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from granary.store import Store


def _docs(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)],
                     "text": [f"note {i} from {'bob@example.com' if i % 7 == 0 else 'someone'}"
                              for i in range(start, start + n)],
                     "subject_id": [f"s{i % 10}" for i in range(start, start + n)]})


def _all_text(store: Store, ref: str) -> list[str]:
    return store.read_table(ref).column("text").to_pylist()


@pytest.mark.parametrize("encrypted", [True, False])
def test_forget_by_subject_column(store: Store, hooks: SecureHooks, encrypted: bool) -> None:
    store.create_dataset("web")
    hooks.guard.set_policy("web", Policy(encrypt=encrypted))
    v1 = store.commit_table("web", _docs(100), message="v1")
    v2 = store.commit_table("web", _docs(100, start=100), message="v2")
    store.branch("web", "dev", from_ref=f"web@{v1.id[:12]}")
    store.read_table("web")  # a reader of v2, listed in the receipt
    hooks.guard.propagate("web-tokens", ["web"])  # a derived dataset: flagged in the receipt
    receipt = forget(store, hooks.guard, "web", "s3")
    assert receipt.derived_datasets == ["web-tokens"]
    assert set(receipt.affected_versions) == {v1.id, v2.id}
    assert set(receipt.new_versions) == {"main", "dev"}
    assert receipt.rows_removed == 20
    assert receipt.shredded_keys == (2 if encrypted else 0)
    assert set(receipt.pending_deletion) == (set() if encrypted else {v1.id, v2.id})
    assert [r["version"] for r in receipt.readers] == [v2.id]
    receipt.verify()
    main = store.read_table("web")
    assert main.num_rows == 180 and "s3" not in main.column("subject_id").to_pylist()
    assert store.read_table("web@dev").num_rows == 90
    for old in (v1, v2):
        with pytest.raises(LookupError, match="expired"):
            store.read_table(f"web@{old.id[:12]}")
    stored = receipts(hooks.guard, "web")
    assert [r.id for r in stored] == [receipt.id]
    stored[0].verify()
    forged = replace(stored[0], affected_versions=[])
    with pytest.raises(CryptoError, match="bad signature"):
        forged.verify()
    rec = hooks.guard.audit.query(action="forget")[0]
    assert "s3" not in str(rec.to_dict())  # the subject is pseudonymous in the audit log
    assert hooks.guard.audit.verify().ok


def test_forget_by_pii_value_then_gc_deletes_plain_shards(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("web")
    v1 = store.commit_table("web", _docs(70), message="v1")
    old_keys = {e.key for e in store.manifest(v1.id).shards}
    receipt = forget(store, hooks.guard, "web", "bob@example.com", by="value")
    assert receipt.rows_removed == 10 and receipt.pending_deletion == [v1.id]
    assert not any("bob@" in t for t in _all_text(store, "web"))
    report = store.gc()  # grace is 0 in these tests: expired -> deleted -> objects freed
    assert report.retention["deleted"] == [v1.id]
    assert old_keys <= set(report.deleted)
    assert store.read_table("web").num_rows == 60


def test_forget_is_admin_only_and_validates(store: Store, hooks: SecureHooks) -> None:
    from granary.errors import AuthorizationError
    from granary.secure.guard import Guard

    store.create_dataset("web")
    store.commit_table("web", _docs(10), message="v1")
    hooks.guard.add_principal("eve")
    hooks.guard.grant("eve", "writer", dataset="web")
    eve = Guard(hooks.guard.catalog, hooks.guard.settings, principal=hooks.guard.registry.get("eve"))
    with pytest.raises(AuthorizationError):
        forget(store, eve, "web", "s1")
    assert store.read_table("web").num_rows == 10
    with pytest.raises(ValueError):
        build_filter("", by="column", column="subject_id")
    with pytest.raises(ValueError):
        build_filter("x", by="column", column="subject_id); drop")
    quoted = build_filter('a"b\\c', by="value", column="text")
    assert quoted == 'contains(text, "a\\"b\\\\c")'


def test_retention_keeps_n_versions_but_never_heads(store: Store, hooks: SecureHooks) -> None:
    store.create_dataset("logs")
    versions = [store.commit_table("logs", _docs(5, start=5 * i), message=f"v{i}") for i in range(5)]
    store.tag("logs", "golden", ref=f"logs@{versions[0].id[:12]}")
    hooks.guard.set_policy("logs", Policy(keep_versions=2))
    report = store.gc()
    expired = report.retention["expired"]["logs"]
    assert set(expired) == {versions[1].id, versions[2].id}  # v0 is tagged, v3-v4 are the newest two
    assert report.retention["deleted"] == sorted(expired)  # grace 0: deleted in the same pass
    assert store.read_table("logs@golden").num_rows == 5
    assert store.read_table("logs").num_rows == 25
    with pytest.raises(LookupError):
        store.read_table(f"logs@{versions[1].id[:12]}")
    dry = hooks.prepare_gc(store, dry_run=True)
    assert dry["expired"] == {} and dry["deleted"] == []
