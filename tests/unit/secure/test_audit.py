"""The audit hash chain: append, query, and detection of every edit, deletion, insertion, reordering, truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from granary.catalog import Catalog
from granary.secure import tables as t
from granary.secure.audit import GENESIS, AuditLog
from granary.secure.checkpoint import (
    export_checkpoint,
    load_checkpoints,
    make_checkpoint,
    stored_checkpoints,
)
from granary.secure.errors import AuditError, CryptoError


def _fill(log: AuditLog, n: int) -> None:
    log.append_many([{"principal": f"p{i % 3}", "action": ("read", "write")[i % 2], "dataset": f"d{i % 4}",
                      "object": f"d{i % 4}@v{i}", "details": {"i": i}} for i in range(n)])


def test_append_links_records_and_verifies(catalog: Catalog) -> None:
    log = AuditLog(catalog, origin="test:1")
    assert log.head() == (0, GENESIS)
    assert log.append(principal="alice", action="read", dataset="web", object="web@abc") == 1
    assert log.append(principal="bob", action="write", dataset="web", outcome="denied",
                      details={"reason": "no role"}) == 2
    _fill(log, 20)
    report = log.verify()
    assert report.ok and report.records == 22 and report.first_bad is None
    denied = log.query(outcome="denied")
    assert [(r.seq, r.principal, r.details) for r in denied] == [(2, "bob", {"reason": "no role"})]
    assert denied[0].origin == "test:1"


def test_query_filters(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log, 24)
    assert {r.principal for r in log.query(principal="p1")} == {"p1"}
    assert len(log.query(dataset="d2", action="read")) == 6
    rows = log.query()
    mid = rows[10].at
    assert all(r.at >= mid for r in log.query(since=mid))
    assert [r.seq for r in log.query(limit=3, newest_first=True)] == [24, 23, 22]


def test_append_joins_the_callers_transaction(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    with pytest.raises(RuntimeError), catalog.write() as conn:
        log.append(principal="a", action="grant", conn=conn)
        raise RuntimeError("change failed")
    assert log.head() == (0, GENESIS)  # rolled back with the change


def test_separators_and_oversized_fields(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    log.append(principal="a\x1fb", action="read", object="x\x1ey")
    assert log.verify().ok
    with pytest.raises(ValueError, match="limit"):
        log.append(principal="a", action="read", object="x" * 5000)
    with pytest.raises(ValueError, match="outcome"):
        log.append(principal="a", action="read", outcome="maybe")


def _exec(catalog: Catalog, sql: str, **params: object) -> None:
    with catalog.write() as conn:
        conn.execute(sa.text(sql), params)


MUTATIONS = st.sampled_from(["edit", "delete", "insert", "swap", "renumber", "replay", "truncate"])
KEY = Ed25519PrivateKey.generate()


@given(kind=MUTATIONS, pos=st.integers(1, 30), field=st.sampled_from(["principal", "action", "dataset",
                                                                       "object", "outcome", "details"]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_tampering_is_detected_at_its_position(catalog: Catalog, kind: str, pos: int, field: str) -> None:
    cat = catalog
    _exec(cat, "DELETE FROM secure_audit")
    log = AuditLog(cat)
    _fill(log, 30)
    pin = make_checkpoint(log, KEY)  # kept outside the catalog
    if kind == "edit":
        _exec(cat, f"UPDATE secure_audit SET {field} = {field} || 'x' WHERE seq = :s", s=pos)
    elif kind == "delete":
        _exec(cat, "DELETE FROM secure_audit WHERE seq = :s", s=pos)
    elif kind == "insert":  # make room, then insert a forged record with a plausible hash
        _exec(cat, "UPDATE secure_audit SET seq = seq + 1000 WHERE seq >= :s", s=pos)
        _exec(cat, "UPDATE secure_audit SET seq = seq - 999 WHERE seq >= 1000")
        _exec(cat, "INSERT INTO secure_audit SELECT :s, at, 'mallory', action, dataset, object, outcome, origin,"
                   " details, hash FROM secure_audit WHERE seq = :n", s=pos, n=pos + 1)
    elif kind == "swap":
        other = pos % 30 + 1
        _exec(cat, "UPDATE secure_audit SET seq = -1 WHERE seq = :a", a=pos)
        _exec(cat, "UPDATE secure_audit SET seq = :a WHERE seq = :b", a=pos, b=other)
        _exec(cat, "UPDATE secure_audit SET seq = :b WHERE seq = -1", b=other)
        pos = min(pos, other)
    elif kind == "replay":  # append a verbatim copy of an old record (with its valid hash) at the end
        _exec(cat, "INSERT INTO secure_audit SELECT 31, at, principal, action, dataset, object, outcome, origin,"
                   " details, hash FROM secure_audit WHERE seq = :s", s=pos)
        pos = 31
    elif kind == "truncate":  # drop the tail: only the checkpoint can tell
        _exec(cat, "DELETE FROM secure_audit WHERE seq >= :s", s=pos)
    else:  # renumber a record into the future
        _exec(cat, "UPDATE secure_audit SET seq = 500 WHERE seq = :s", s=pos)
    report = log.verify(checkpoints=[pin])
    assert not report.ok
    assert report.first_bad == pos, report
    assert report.records == pos - 1


def test_checkpoints_catch_truncation_and_rewrites(tmp_path: Path, catalog: Catalog) -> None:
    log = AuditLog(catalog)
    key = Ed25519PrivateKey.generate()
    _fill(log, 10)
    cp = make_checkpoint(log, key)
    assert (cp.seq, cp.hash) == log.head()
    worm = tmp_path / "worm"
    path = export_checkpoint(cp, worm)
    assert path.stat().st_mode & 0o222 == 0  # read-only
    assert export_checkpoint(cp, worm) == path  # idempotent, never rewritten
    assert stored_checkpoints(log) == [cp]
    _fill(log, 5)
    assert log.verify(checkpoints=load_checkpoints(worm)).ok
    # truncation of the tail: invisible to the chain alone, caught by the checkpoint
    _exec(catalog, "DELETE FROM secure_audit WHERE seq > 7")
    assert log.verify().ok
    report = log.verify(checkpoints=load_checkpoints(worm))
    assert not report.ok and report.first_bad == 8 and "truncated" in (report.reason or "")


def test_fully_rewritten_chain_is_caught_by_checkpoint(tmp_path: Path, catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log, 6)
    cp = make_checkpoint(log, Ed25519PrivateKey.generate())
    # an attacker with database access deletes record 3 and recomputes every later hash
    with catalog.write() as conn:
        conn.execute(t.audit.delete())
    _fill(log, 6)  # same content, new timestamps: a consistent but different chain
    assert log.verify().ok
    report = log.verify(checkpoints=[cp])
    assert not report.ok and report.first_bad == 6 and "rewritten" in (report.reason or "")


def test_forged_checkpoint_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log, 3)
    cp = make_checkpoint(log, Ed25519PrivateKey.generate())
    forged = type(cp)(seq=cp.seq, hash="0" * 64, at=cp.at, public_key=cp.public_key, signature=cp.signature)
    with pytest.raises(CryptoError, match="bad signature"):
        log.verify(checkpoints=[forged])


def test_checkpoint_refuses_a_broken_chain(catalog: Catalog) -> None:
    log = AuditLog(catalog)
    _fill(log, 4)
    _exec(catalog, "UPDATE secure_audit SET principal = 'mallory' WHERE seq = 2")
    with pytest.raises(AuditError) as err:
        make_checkpoint(log, Ed25519PrivateKey.generate())
    assert err.value.position == 2


def test_appends_give_their_connection_back(catalog: Catalog) -> None:
    """A log per request (the server binds one per caller) must not keep a pooled connection per thread: 40
    server threads kept 40 connections of a pool of 15 and every request stalled on the pool."""
    import threading

    logs = [AuditLog(catalog, origin=f"test:{i}") for i in range(8)]

    def work(log: AuditLog) -> None:
        for _ in range(3):
            log.append(principal="p", action="list", dataset="d")

    threads = [threading.Thread(target=work, args=(log,)) for log in logs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert catalog.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert logs[0].head()[0] == 24
